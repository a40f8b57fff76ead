//! Messages the proxy itself originates (authentication, key data, ParameterStatus,
//! ReadyForQuery, ErrorResponse, CancelRequest, and the admin console's result sets), encoded with
//! pgwire's message types or by hand where the layout is trivial.

use bytes::{BufMut, BytesMut};
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, SecretKey};
use pgwire::messages::Message;

use super::backend::TxnStatus;

fn put<M: Message>(buf: &mut BytesMut, msg: &M) {
    // pgwire only fails on messages over its size limits; ours are tiny and bounded.
    if let Err(e) = msg.encode(buf) {
        tracing::error!(error = %e, "could not encode a proxy-originated message");
    }
}

pub fn auth(buf: &mut BytesMut, auth: Authentication) {
    put(buf, &auth);
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, key: i32) {
    put(buf, &BackendKeyData::new(pid, SecretKey::I32(key)));
}

/// A CancelRequest (an untagged startup-phase packet): what a client sends, and what this proxy
/// sends a backend or a peer instance on its behalf.
pub fn cancel_request(buf: &mut BytesMut, pid: i32, key: &[u8]) {
    buf.put_u32(12 + key.len() as u32);
    buf.put_u32(80877102);
    buf.put_i32(pid);
    buf.put_slice(key);
}

pub fn ready_for_query(buf: &mut BytesMut, status: TxnStatus) {
    let status = match status {
        TxnStatus::Idle => TransactionStatus::Idle,
        TxnStatus::InTransaction => TransactionStatus::Transaction,
        TxnStatus::Failed => TransactionStatus::Error,
    };
    put(buf, &ReadyForQuery::new(status));
}

/// ParameterStatus from raw name/value bytes (the backend's own values are passed through as is).
pub fn parameter_status(buf: &mut BytesMut, name: &[u8], value: &[u8]) {
    buf.put_u8(b'S');
    buf.put_u32((4 + name.len() + 1 + value.len() + 1) as u32);
    buf.put_slice(name);
    buf.put_u8(0);
    buf.put_slice(value);
    buf.put_u8(0);
}

/// A NoticeResponse with severity, SQLSTATE and message.
pub fn notice_response(buf: &mut BytesMut, severity: &str, code: &str, message: &str) {
    let start = buf.len();
    error_response(buf, severity, code, message, None, None);
    buf[start] = b'N';
}

/// RowDescription of text-format columns: (name, type OID) each, no table behind them.
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32)]) {
    let len = 4 + 2 + columns.iter().map(|(n, _)| n.len() + 1 + 18).sum::<usize>();
    buf.put_u8(b'T');
    buf.put_u32(len as u32);
    buf.put_u16(columns.len() as u16);
    for (name, oid) in columns {
        buf.put_slice(name.as_bytes());
        buf.put_u8(0);
        buf.put_u32(0); // table OID
        buf.put_u16(0); // column number
        buf.put_u32(*oid);
        buf.put_i16(-1); // type size: variable, as for text
        buf.put_i32(-1); // no type modifier
        buf.put_u16(0); // text format
    }
}

/// A DataRow of text values (`None` is SQL NULL).
pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    let len = 4
        + 2
        + values
            .iter()
            .map(|v| 4 + v.map_or(0, str::len))
            .sum::<usize>();
    buf.put_u8(b'D');
    buf.put_u32(len as u32);
    buf.put_u16(values.len() as u16);
    for v in values {
        match v {
            Some(v) => {
                buf.put_u32(v.len() as u32);
                buf.put_slice(v.as_bytes());
            }
            None => buf.put_i32(-1),
        }
    }
}

/// CommandComplete with its tag (`SHOW`, `SELECT 3`, …).
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    buf.put_u8(b'C');
    buf.put_u32((4 + tag.len() + 1) as u32);
    buf.put_slice(tag.as_bytes());
    buf.put_u8(0);
}

/// EmptyQueryResponse: the query string held no statement.
pub fn empty_query_response(buf: &mut BytesMut) {
    buf.extend_from_slice(b"I\0\0\0\x04");
}

/// NegotiateProtocolVersion: we speak 3.0 and none of the `_pq_.` options.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unsupported: &[&str]) {
    let len = 4 + 4 + 4 + unsupported.iter().map(|o| o.len() + 1).sum::<usize>();
    buf.put_u8(b'v');
    buf.put_u32(len as u32);
    buf.put_u32(0);
    buf.put_u32(unsupported.len() as u32);
    for o in unsupported {
        buf.put_slice(o.as_bytes());
        buf.put_u8(0);
    }
}

/// An ErrorResponse with severity, SQLSTATE, message and optional detail/hint.
pub fn error_response(
    buf: &mut BytesMut,
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let mut fields = vec![
        (b'S', severity.to_owned()),
        (b'V', severity.to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    if let Some(d) = detail {
        fields.push((b'D', d.to_owned()));
    }
    if let Some(h) = hint {
        fields.push((b'H', h.to_owned()));
    }
    put(buf, &ErrorResponse::new(fields));
}

#[cfg(test)]
mod tests {
    use super::super::backend::{parameter_status as parse_ps, ErrorFields};
    use super::super::frame::{body, split_message};
    use super::*;

    #[test]
    fn originated_messages_round_trip_through_our_parsers() {
        let mut buf = BytesMut::new();
        error_response(
            &mut buf,
            "FATAL",
            "3D000",
            "database \"x\" does not exist",
            None,
            Some("h"),
        );
        parameter_status(&mut buf, b"server_version", b"15.18");
        ready_for_query(&mut buf, TxnStatus::InTransaction);
        backend_key_data(&mut buf, 42, -7);
        let e = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(e[0], b'E');
        let f = ErrorFields::parse(body(&e)).unwrap();
        assert_eq!((f.severity.as_str(), f.code.as_str()), ("FATAL", "3D000"));
        let s = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(
            parse_ps(body(&s)),
            Some((&b"server_version"[..], &b"15.18"[..]))
        );
        let z = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(&z[..], b"Z\0\0\0\x05T");
        let k = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(
            &k[..],
            &[b'K', 0, 0, 0, 12, 0, 0, 0, 42, 0xff, 0xff, 0xff, 0xf9]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn result_set_messages_have_postgresql_layout() {
        let mut buf = BytesMut::new();
        row_description(&mut buf, &[("a", 25), ("n", 20)]);
        data_row(&mut buf, &[Some("x"), None]);
        command_complete(&mut buf, "SHOW");
        empty_query_response(&mut buf);
        let t = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        let mut want = b"T\0\0\0\x2e\0\x02a\0".to_vec();
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 0xff, 0xff]);
        want.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0]);
        want.extend_from_slice(b"n\0");
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0xff, 0xff]);
        want.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0]);
        assert_eq!(&t[..], &want[..]);
        let d = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(&d[..], b"D\0\0\0\x0f\0\x02\0\0\0\x01x\xff\xff\xff\xff");
        let c = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(&c[..], b"C\0\0\0\x09SHOW\0");
        let i = split_message(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(&i[..], b"I\0\0\0\x04");
        assert!(buf.is_empty());
    }

    #[test]
    fn negotiate_protocol_version_layout() {
        let mut buf = BytesMut::new();
        negotiate_protocol_version(&mut buf, &["_pq_.x"]);
        assert_eq!(&buf[..], b"v\0\0\0\x13\0\0\0\0\0\0\0\x01_pq_.x\0");
    }
}
