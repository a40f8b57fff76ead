//! Table tests for client location: startup options, their parsing, and the fallback order.

use super::*;

fn regions() -> BTreeMap<String, Region> {
    [
        (
            "us-east",
            Region {
                lat: 39.0,
                lon: -77.5,
            },
        ),
        (
            "eu-west",
            Region {
                lat: 53.3,
                lon: -6.3,
            },
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// (name, requested, GeoIP finding, expected)
type LocateCase = (
    &'static str,
    Option<Requested>,
    Option<Region>,
    Result<ClientLocation, ()>,
);
/// (name, startup parameters, expected request, parameters left for the backend)
type OptionsCase = (
    &'static str,
    Vec<(String, String)>,
    Option<Requested>,
    Vec<(String, String)>,
);

const PROXY: Region = Region {
    lat: 39.0,
    lon: -77.5,
};
const PARIS: Region = Region {
    lat: 48.85,
    lon: 2.35,
};

#[test]
fn location_comes_from_the_option_then_geoip_then_the_proxy() {
    let r = regions();
    let eu = Requested::Region("eu-west".into());
    let cases: Vec<LocateCase> = vec![
        (
            "region option wins over GeoIP",
            Some(eu.clone()),
            Some(PARIS),
            Ok(ClientLocation {
                at: r["eu-west"],
                source: GeoSource::StartupOption,
            }),
        ),
        (
            "coordinates option",
            Some(Requested::Location("48.85, 2.35".into())),
            None,
            Ok(ClientLocation {
                at: PARIS,
                source: GeoSource::StartupOption,
            }),
        ),
        (
            "GeoIP when no option",
            None,
            Some(PARIS),
            Ok(ClientLocation {
                at: PARIS,
                source: GeoSource::GeoIp,
            }),
        ),
        (
            "proxy region when nothing is known",
            None,
            None,
            Ok(ClientLocation {
                at: PROXY,
                source: GeoSource::ProxyRegion,
            }),
        ),
        (
            "unknown region is an error",
            Some(Requested::Region("mars".into())),
            Some(PARIS),
            Err(()),
        ),
        (
            "bad coordinates are an error",
            Some(Requested::Location("north".into())),
            None,
            Err(()),
        ),
        (
            "latitude out of range",
            Some(Requested::Location("91,0".into())),
            None,
            Err(()),
        ),
        (
            "longitude out of range",
            Some(Requested::Location("0,-181".into())),
            None,
            Err(()),
        ),
    ];
    for (name, req, geoip, want) in cases {
        let got = locate(req.as_ref(), &r, geoip, PROXY).map_err(|_| ());
        assert_eq!(got, want, "{name}");
    }
    let err = locate(Some(&Requested::Region("mars".into())), &r, None, PROXY).unwrap_err();
    assert!(
        err.contains("\"mars\"") && err.contains("eu-west, us-east"),
        "{err}"
    );
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn startup_options_are_found_and_removed() {
    let cases: Vec<OptionsCase> = vec![
        (
            "-c with a space",
            params(&[("user", "u"), ("options", "-c pgmeridian.region=eu-west")]),
            Some(Requested::Region("eu-west".into())),
            params(&[("user", "u")]),
        ),
        (
            "-c joined, other options kept",
            params(&[(
                "options",
                "-cstatement_timeout=5s -cpgmeridian.location=48.85,2.35",
            )]),
            Some(Requested::Location("48.85,2.35".into())),
            params(&[("options", "-cstatement_timeout=5s")]),
        ),
        (
            "--name=value form with dashes",
            params(&[(
                "options",
                "--pgmeridian.region=eu-west -c search_path=a\\ b",
            )]),
            Some(Requested::Region("eu-west".into())),
            params(&[("options", "-c search_path=a\\ b")]),
        ),
        (
            "a startup parameter of its own",
            params(&[("user", "u"), ("pgmeridian.region", "us-east")]),
            Some(Requested::Region("us-east".into())),
            params(&[("user", "u")]),
        ),
        (
            "the last one wins",
            params(&[("options", "-c pgmeridian.region=a -c pgmeridian.region=b")]),
            Some(Requested::Region("b".into())),
            params(&[]),
        ),
        (
            "names match in any case; a parameter of its own wins over options",
            params(&[
                ("options", "-c PgMeridian.Region=eu-west"),
                ("PGMERIDIAN.LOCATION", "1,2"),
            ]),
            Some(Requested::Location("1,2".into())),
            params(&[]),
        ),
        (
            "nothing of ours: left exactly as sent",
            params(&[("options", "-c  application_name=x\u{3000}y")]),
            None,
            params(&[("options", "-c  application_name=x\u{3000}y")]),
        ),
        (
            "nothing of ours",
            params(&[("options", "-c work_mem=64MB"), ("user", "u")]),
            None,
            params(&[("options", "-c work_mem=64MB"), ("user", "u")]),
        ),
        (
            "a dangling -c is left for the server to reject",
            params(&[("options", "-c")]),
            None,
            params(&[("options", "-c")]),
        ),
    ];
    for (name, mut p, want, rest) in cases {
        assert_eq!(take_requested(&mut p), want, "{name}");
        assert_eq!(p, rest, "{name}");
    }
}

#[test]
fn options_split_like_the_server() {
    assert_eq!(
        split_options("  -c  a=b\t-cx=y "),
        vec!["-c", "a=b", "-cx=y"]
    );
    assert_eq!(split_options("-c a=x\\ y\\\\"), vec!["-c", "a=x y\\"]);
    assert_eq!(split_options(""), Vec::<String>::new());
    let tokens = vec!["-c".to_string(), "a=x y\\".to_string()];
    assert_eq!(split_options(&join_options(&tokens)), tokens);
}
