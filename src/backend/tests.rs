//! Backend logins against fake servers on loopback: socket keepalive settings, what each
//! `require_auth` lets the proxy answer, and the cap on SCRAM iterations.

use super::*;
use crate::config::{AuthMethod, Region};
use crate::topology::ConfiguredRole;
use tokio::net::TcpListener;

fn node(addr: std::net::SocketAddr, require_auth: Option<Vec<BackendAuth>>) -> Arc<NodeSpec> {
    node_with(addr, |n| n.require_auth = require_auth)
}

fn node_with(
    addr: std::net::SocketAddr,
    f: impl FnOnce(&mut crate::config::Node),
) -> Arc<NodeSpec> {
    let mut n = NodeSpec::plain(
        "app",
        ConfiguredRole::Primary,
        "127.0.0.1",
        addr.port(),
        "here",
        Region { lat: 0.0, lon: 0.0 },
    );
    f(&mut n.configured);
    Arc::new(n)
}

fn user() -> UserSpec {
    UserSpec {
        name: "app".into(),
        password: "the-password".into(),
        auth: AuthMethod::ScramSha256,
        scram: crate::auth::ScramKeys::from_salted(vec![0; 16], vec![0; 32], 4096),
        backend_scram: Default::default(),
        admin: false,
    }
}

fn auth_request(code: i32, data: &[u8]) -> Vec<u8> {
    let mut m = vec![b'R'];
    m.extend_from_slice(&(8 + data.len() as u32).to_be_bytes());
    m.extend_from_slice(&code.to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// A server that takes one login: reads the startup packet, lets `answer` reply (it gets
/// the socket), then collects whatever the proxy sends until it closes.
async fn fake_server<F, Fut>(answer: F) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = TcpStream> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let len = s.read_u32().await.unwrap();
        let mut startup = vec![0; len as usize - 4];
        s.read_exact(&mut startup).await.unwrap();
        let mut s = answer(s).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        rest
    });
    (addr, task)
}

/// A server that asks for `request` and nothing else.
async fn asking(request: Vec<u8>) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    fake_server(move |mut s| async move {
        s.write_all(&request).await.unwrap();
        s
    })
    .await
}

#[tokio::test]
async fn backend_sockets_get_the_keepalive_settings() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let n = node_with(listener.local_addr().unwrap(), |n| {
        n.tls = crate::config::BackendTls::Disable
    });
    let tcp = TcpOptions {
        keepalive: Duration::from_secs(7),
        user_timeout: Duration::from_secs(11),
    };
    let Stream::Plain(s) = open_stream_with(&n, tcp).await.unwrap() else {
        panic!("a plain stream for tls: disable");
    };
    let sock = socket2::SockRef::from(&s);
    assert!(sock.keepalive().unwrap());
    assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
    assert_eq!(
        sock.tcp_user_timeout().unwrap(),
        Some(Duration::from_secs(11))
    );
    let Stream::Plain(s) = open_stream(&n).await.unwrap() else {
        panic!("plain");
    };
    let sock = socket2::SockRef::from(&s);
    assert_eq!(
        sock.tcp_keepalive_time().unwrap(),
        Duration::from_secs(30),
        "the default"
    );
}

#[tokio::test]
async fn passwords_are_not_sent_to_servers_that_may_not_ask_for_them() {
    for (request, method) in [
        (auth_request(3, b""), BackendAuth::Password),
        (auth_request(5, b"salt"), BackendAuth::Md5),
    ] {
        let (addr, server) = asking(request).await;
        let err = connect(&node(addr, None), &user(), &[], Duration::from_secs(5))
            .await
            .err()
            .expect("refused");
        match &err {
            ConnectError::AuthNotAllowed { asked, .. } => assert_eq!(*asked, method),
            other => panic!("{other:?}"),
        }
        let told = err.to_client();
        assert_eq!(told.code, "08006", "{told:?}");
        assert!(told.message.contains("app/primary (127.0.0.1:"), "{told:?}");
        assert!(told.message.contains("require_auth"), "{told:?}");
        assert_eq!(
            server.await.unwrap(),
            b"",
            "nothing was sent after the startup packet"
        );
    }
}

#[tokio::test]
async fn a_node_that_lists_a_method_gets_the_password_that_way() {
    let (addr, server) = asking(auth_request(3, b"")).await;
    let allowed = node(addr, Some(vec![BackendAuth::Password]));
    let err = connect(&allowed, &user(), &[], Duration::from_millis(300))
        .await
        .err()
        .expect("the fake server never finishes the login");
    assert!(matches!(err, ConnectError::Timeout { .. }), "{err:?}");
    let sent = server.await.unwrap();
    assert_eq!(sent[0], b'p');
    assert!(sent.windows(12).any(|w| w == b"the-password"));
}

#[tokio::test]
async fn trust_is_allowed_by_default_and_can_be_refused() {
    let mut ok = auth_request(0, b"");
    ok.extend_from_slice(b"Z\0\0\0\x05I");
    let (addr, _server) = asking(ok.clone()).await;
    connect(&node(addr, None), &user(), &[], Duration::from_secs(5))
        .await
        .expect("trust is allowed by default");
    let (addr, _server) = asking(ok).await;
    let strict = node(addr, Some(vec![BackendAuth::ScramSha256]));
    let err = connect(&strict, &user(), &[], Duration::from_secs(5))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            ConnectError::AuthNotAllowed {
                asked: BackendAuth::None,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Answers SASL with a server-first message carrying `iterations`.
async fn scram_server(iterations: u32) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    fake_server(move |mut s| async move {
        s.write_all(&auth_request(10, b"SCRAM-SHA-256\0\0"))
            .await
            .unwrap();
        let mut io = MessageIo::new(s);
        let initial = io.read_message(1 << 16).await.unwrap();
        let text = String::from_utf8_lossy(frame::body(&initial)).into_owned();
        let nonce = text.split("r=").nth(1).unwrap().to_owned();
        let first = format!("r={nonce}server,s=c2FsdHNhbHQ=,i={iterations}");
        io.wbuf
            .extend_from_slice(&auth_request(11, first.as_bytes()));
        io.flush().await.unwrap();
        io.io
    })
    .await
}

#[tokio::test]
async fn iteration_counts_are_capped_and_abandoned_derivations_stop() {
    let (addr, _server) = scram_server(scram::DEFAULT_MAX_ITERATIONS + 1).await;
    let started = std::time::Instant::now();
    let err = connect(&node(addr, None), &user(), &[], Duration::from_secs(5))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("max_scram_iterations"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // A node allowed a huge count: the connect timeout ends the derivation as well.
    let (addr, _server) = scram_server(u32::MAX).await;
    let generous = node_with(addr, |n| n.max_scram_iterations = Some(u32::MAX));
    let err = connect(&generous, &user(), &[], Duration::from_millis(300))
        .await
        .err()
        .expect("timed out");
    assert!(matches!(err, ConnectError::Timeout { .. }), "{err:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while scram::RUNNING.load(Ordering::Relaxed) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned derivation is still running"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
