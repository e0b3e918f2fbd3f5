//! The app's kubelet probes, rewritten to go through the sidecar's health port
//! (docs/operating.md#app-probes).
//!
//! On a STRICT port the kubelet's plaintext HTTP and TCP probes would be refused, so Istio's
//! injector rewrites each probe to `GET :15021/app-health/<container>/<livez|readyz|startupz>`
//! and tells the sidecar what the original probe was in `ISTIO_KUBE_APP_PROBERS` (JSON: path ->
//! `{httpGet | tcpSocket, timeoutSeconds}`). peerguard reads the same JSON, or the shorter
//! `--app-probe PATH=http:PORT/PATH` / `PATH=tcp:PORT`, and probes the app from inside the pod.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

/// Every rewritten probe, by the path the kubelet asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppProbes(BTreeMap<String, AppProbe>);

/// What one probe asks of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProbe {
    pub check: ProbeCheck,
    /// The kubelet's `timeoutSeconds` (default 1 s, as the kubelet's).
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeCheck {
    /// An HTTP/1.1 GET; 200..=399 passes, as for the kubelet.
    Http {
        host: IpAddr,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    /// A TCP connect; accepted passes.
    Tcp { host: IpAddr, port: u16 },
}

/// Why a probe definition is refused (at start: a probe that cannot run would fail the pod
/// later, with less to go on).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("--app-probe {0:?}: expected PATH=http:PORT/PATH or PATH=tcp:PORT, e.g. /app-health/app/livez=http:8080/healthz")]
    Flag(String),
    #[error("probe path {0:?}: expected /app-health/<container>/livez, readyz or startupz")]
    Path(String),
    #[error("ISTIO_KUBE_APP_PROBERS is not JSON: {0}")]
    Json(String),
    #[error("ISTIO_KUBE_APP_PROBERS {path}: {problem}")]
    Prober { path: String, problem: String },
    #[error("probe path {0} is defined twice")]
    Duplicate(String),
}

/// Where probes reach the app unless a probe names a host: the pod's own loopback, as
/// Istio's agent does.
const DEFAULT_HOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

impl AppProbes {
    /// The probes of `--app-probe` flags and of the Istio JSON (either may be empty).
    pub fn from_args(flags: &[String], istio_json: Option<&str>) -> Result<Self, ProbeError> {
        let mut probes = AppProbes::default();
        for flag in flags {
            let (path, probe) = parse_flag(flag)?;
            probes.insert(path, probe)?;
        }
        if let Some(json) = istio_json.filter(|json| !json.trim().is_empty()) {
            for (path, probe) in parse_istio_json(json)? {
                probes.insert(path, probe)?;
            }
        }
        Ok(probes)
    }

    fn insert(&mut self, path: String, probe: AppProbe) -> Result<(), ProbeError> {
        check_path(&path)?;
        if self.0.insert(path.clone(), probe).is_some() {
            return Err(ProbeError::Duplicate(path));
        }
        Ok(())
    }

    /// The probe behind a path the kubelet asks for.
    pub fn get(&self, path: &str) -> Option<&AppProbe> {
        self.0.get(path)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// `/app-health/<container>/<livez|readyz|startupz>`, as Istio's injector writes them.
fn check_path(path: &str) -> Result<(), ProbeError> {
    let mut parts = path.split('/');
    let ok = matches!(
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(""), Some("app-health"), Some(container), Some("livez" | "readyz" | "startupz"), None)
            if !container.is_empty()
    );
    ok.then_some(()).ok_or_else(|| ProbeError::Path(path.to_owned()))
}

/// `PATH=http:PORT/PATH` or `PATH=tcp:PORT`.
fn parse_flag(flag: &str) -> Result<(String, AppProbe), ProbeError> {
    let bad = || ProbeError::Flag(flag.to_owned());
    let (path, target) = flag.split_once('=').ok_or_else(bad)?;
    let check = if let Some(rest) = target.strip_prefix("http:") {
        let (port, probe_path) = rest
            .split_once('/')
            .map_or((rest, "/".to_owned()), |(port, p)| (port, format!("/{p}")));
        ProbeCheck::Http {
            host: DEFAULT_HOST,
            port: parse_port(port).ok_or_else(bad)?,
            path: probe_path,
            headers: Vec::new(),
        }
    } else if let Some(port) = target.strip_prefix("tcp:") {
        ProbeCheck::Tcp {
            host: DEFAULT_HOST,
            port: parse_port(port).ok_or_else(bad)?,
        }
    } else {
        return Err(bad());
    };
    Ok((
        path.to_owned(),
        AppProbe {
            check,
            timeout: DEFAULT_TIMEOUT,
        },
    ))
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse().ok().filter(|&port| port != 0)
}

/// Istio's `ISTIO_KUBE_APP_PROBERS`: `{"/app-health/app/livez": {"httpGet": {"path": "/healthz",
/// "port": 8080, "scheme": "HTTP", "host": "...", "httpHeaders": [{"name", "value"}]},
/// "timeoutSeconds": 1}, "/app-health/app/readyz": {"tcpSocket": {"port": 8080}}}`.
fn parse_istio_json(json: &str) -> Result<Vec<(String, AppProbe)>, ProbeError> {
    let value: Value = serde_json::from_str(json).map_err(|e| ProbeError::Json(e.to_string()))?;
    let Value::Object(probers) = value else {
        return Err(ProbeError::Json("expected an object of probe paths".into()));
    };
    probers
        .into_iter()
        .map(|(path, prober)| {
            let probe = parse_prober(&prober).map_err(|problem| ProbeError::Prober {
                path: path.clone(),
                problem,
            })?;
            Ok((path, probe))
        })
        .collect()
}

fn parse_prober(prober: &Value) -> Result<AppProbe, String> {
    let timeout = match prober.get("timeoutSeconds") {
        None => DEFAULT_TIMEOUT,
        Some(seconds) => Duration::from_secs(
            seconds
                .as_u64()
                .filter(|&s| s > 0)
                .ok_or("timeoutSeconds: expected a positive whole number")?,
        ),
    };
    let check = match (prober.get("httpGet"), prober.get("tcpSocket"), prober.get("grpc")) {
        (Some(http), None, None) => {
            if let Some(scheme) = http.get("scheme").and_then(Value::as_str) {
                if !scheme.eq_ignore_ascii_case("http") {
                    return Err(format!(
                        "httpGet.scheme {scheme:?}: only HTTP probes are rewritten through peerguard"
                    ));
                }
            }
            ProbeCheck::Http {
                host: host(http)?,
                port: port(http, "httpGet")?,
                path: http.get("path").and_then(Value::as_str).unwrap_or("/").to_owned(),
                headers: headers(http)?,
            }
        }
        (None, Some(tcp), None) => ProbeCheck::Tcp {
            host: host(tcp)?,
            port: port(tcp, "tcpSocket")?,
        },
        (None, None, Some(_)) => return Err("grpc probes are not supported by peerguard".into()),
        _ => return Err("expected exactly one of httpGet, tcpSocket".into()),
    };
    Ok(AppProbe { check, timeout })
}

/// The probe's `host` if it names an IP; the pod's loopback if absent.
fn host(action: &Value) -> Result<IpAddr, String> {
    match action.get("host").and_then(Value::as_str) {
        None | Some("") => Ok(DEFAULT_HOST),
        Some(host) => host
            .parse()
            .map_err(|_| format!("host {host:?}: expected an IP address")),
    }
}

/// A numeric port (the injector resolves named ports before writing the JSON).
fn port(action: &Value, field: &str) -> Result<u16, String> {
    let port = action.get("port").ok_or_else(|| format!("{field}.port is missing"))?;
    port.as_u64()
        .or_else(|| port.as_str().and_then(|text| text.parse().ok()))
        .and_then(|port| u16::try_from(port).ok())
        .filter(|&port| port != 0)
        .ok_or_else(|| format!("{field}.port {port}: expected a port number"))
}

fn headers(http: &Value) -> Result<Vec<(String, String)>, String> {
    let Some(headers) = http.get("httpHeaders") else {
        return Ok(Vec::new());
    };
    headers
        .as_array()
        .ok_or("httpGet.httpHeaders: expected a list")?
        .iter()
        .map(|header| {
            match (
                header.get("name").and_then(Value::as_str),
                header.get("value").and_then(Value::as_str),
            ) {
                (Some(name), Some(value)) => Ok((name.to_owned(), value.to_owned())),
                _ => Err("httpGet.httpHeaders: each needs a name and a value".to_owned()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_http_and_tcp_probes() {
        let probes = AppProbes::from_args(
            &[
                "/app-health/app/livez=http:8080/healthz".into(),
                "/app-health/app/readyz=tcp:8081".into(),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            probes.get("/app-health/app/livez").unwrap().check,
            ProbeCheck::Http {
                host: DEFAULT_HOST,
                port: 8080,
                path: "/healthz".into(),
                headers: Vec::new()
            }
        );
        assert_eq!(
            probes.get("/app-health/app/readyz").unwrap().check,
            ProbeCheck::Tcp {
                host: DEFAULT_HOST,
                port: 8081
            }
        );
        for bad in [
            "/app-health/app/livez",
            "/app-health/app/livez=udp:1",
            "/app-health/app/livez=http:x/",
        ] {
            assert_eq!(
                AppProbes::from_args(&[bad.into()], None),
                Err(ProbeError::Flag(bad.into()))
            );
        }
        assert_eq!(
            AppProbes::from_args(&["/healthz=tcp:1".into()], None),
            Err(ProbeError::Path("/healthz".into()))
        );
    }

    #[test]
    fn istios_injector_json_is_read_as_the_injector_writes_it() {
        let json = r#"{
            "/app-health/web/livez": {"httpGet": {"path": "/live", "port": 8080, "scheme": "HTTP",
                "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "timeoutSeconds": 3},
            "/app-health/web/readyz": {"tcpSocket": {"port": 8080}}
        }"#;
        let probes = AppProbes::from_args(&[], Some(json)).unwrap();
        let live = probes.get("/app-health/web/livez").unwrap();
        assert_eq!(live.timeout, Duration::from_secs(3));
        assert_eq!(
            live.check,
            ProbeCheck::Http {
                host: DEFAULT_HOST,
                port: 8080,
                path: "/live".into(),
                headers: vec![("X-Probe".into(), "1".into())]
            }
        );
        assert_eq!(probes.get("/app-health/web/readyz").unwrap().timeout, DEFAULT_TIMEOUT);
        assert_eq!(probes.paths().count(), 2);
    }

    #[test]
    fn probes_peerguard_cannot_run_are_refused_at_start() {
        for (json, problem) in [
            (r#"{"/app-health/a/livez": {"grpc": {"port": 9}}}"#, "grpc"),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"port": 9, "scheme": "HTTPS"}}}"#,
                "HTTPS",
            ),
            (
                r#"{"/app-health/a/livez": {"httpGet": {"path": "/"}}}"#,
                "port is missing",
            ),
            (r#"{"/app-health/a/livez": {}}"#, "exactly one"),
        ] {
            let error = AppProbes::from_args(&[], Some(json)).unwrap_err().to_string();
            assert!(error.contains(problem), "{json}: {error}");
        }
        let twice = AppProbes::from_args(
            &["/app-health/a/livez=tcp:1".into()],
            Some(r#"{"/app-health/a/livez": {"tcpSocket": {"port": 2}}}"#),
        );
        assert_eq!(twice, Err(ProbeError::Duplicate("/app-health/a/livez".into())));
    }
}
