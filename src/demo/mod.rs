//! `peerguard demo`: a complete local sandbox on built-in defaults. A throwaway mesh CA, an
//! echo app that speaks plaintext and its own TLS on three ports, peerguard in front of it with
//! one PERMISSIVE, one STRICT and one DISABLE port, and the commands that show each behaviour,
//! what `tls-check` says of the echo Service's ports, and what the STRICT audit made of it all.

mod echo_app;
mod ports;
pub mod prefixed;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::certs::DevCa;
use crate::cli::{Cli, Command, DemoArgs};
use crate::tls::identity::SpiffeId;
use ports::Ports;

const NAMESPACE: &str = "demo";
const WORKLOAD_LABELS: &str = "app=echo";
/// Certificates outlive any demo session but not a forgotten directory.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// What `--mesh-ca` asks its CA for: short enough to see a renewal scheduled, long enough to
/// never expire under a person trying things.
const MESH_CA_TTL: &str = "1h";
/// The projected-token stand-in of `--mesh-ca`.
const TOKEN_FILE: &str = "istio-token";
const DEMO_TOKEN: &str = "demo-token";
/// The two CAs get different names, so that what openssl prints tells the mesh's certificate
/// (mTLS terminated by peerguard) from the app's own (TLS passed through).
const MESH_CA_NAME: &str = "peerguard demo mesh CA";
const APP_CA_NAME: &str = "peerguard demo app CA (the app's own TLS, not the mesh)";

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(demo(args))
}

async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let ports = ports::choose(args.base_port)?;
    // A directory the demo made is removed however it ends (it holds a CA key); one given with
    // --dir is the user's and stays.
    let (dir, _scratch) = match &args.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = std::env::temp_dir().join(format!("peerguard-demo-{}", std::process::id()));
            (dir.clone(), Some(Scratch(dir)))
        }
    };
    write_pki(&dir)?;
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, policy_yaml(&ports)).with_context(|| format!("writing {}", policy.display()))?;

    let app_tls = app_tls_config(&dir)?;
    let mut app_listeners = Vec::new();
    for (_, app) in [ports.permissive, ports.strict, ports.disable] {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, app));
        app_listeners.push(crate::net::bind_listener(addr).with_context(|| format!("echo app on {addr}"))?);
    }
    echo_app::spawn(app_listeners, app_tls);
    if args.mesh_ca {
        start_mesh_ca(&dir, ports.ca)?;
    }

    let run_line = run_command_line(&dir, &ports, args.mesh_ca);
    let Command::Run(run_args) = Cli::try_parse_from(&run_line)?.command else {
        anyhow::bail!("the demo's own run command line did not parse as `run`");
    };
    let config = crate::config::Config::from_args(&run_args)?;
    // The start error already names its cause; as an anyhow chain it would say it twice.
    let running = crate::app::start(&config).await.map_err(|e| anyhow::anyhow!("{e}"))?;

    println!(
        "{}",
        instructions(&dir, args.dir.is_none(), &ports, &run_line, args.mesh_ca)
    );
    tokio::signal::ctrl_c().await?;
    running
        .drain(crate::config::DrainTimes {
            accept: Duration::ZERO,
            timeout: Duration::from_secs(1),
        })
        .await;
    Ok(())
}

/// The demo's mesh CA served as Istio's gRPC CA service on `port`, for `--mesh-ca`: peerguard
/// gets its certificate through the same client it uses against istiod. Its token file holds the
/// one token it accepts.
fn start_mesh_ca(dir: &Path, port: u16) -> anyhow::Result<()> {
    let ca = DevCa::load(&dir.join("mesh-ca"))?;
    let token_file = dir.join(TOKEN_FILE);
    std::fs::write(&token_file, DEMO_TOKEN).with_context(|| format!("writing {}", token_file.display()))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = crate::net::bind_listener(addr).with_context(|| format!("mesh CA on {addr}"))?;
    let service = crate::dev_ca::DevCaService::new(ca, VALIDITY, Some(DEMO_TOKEN.to_owned()));
    tokio::spawn(async move {
        if let Err(e) = service.serve(listener, std::future::pending()).await {
            tracing::error!(error = %e, "the demo's mesh CA stopped");
        }
    });
    Ok(())
}

/// Removes the demo's own directory when the demo ends, by Ctrl-C or by an error.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This very binary, as a person would type it: after `cargo run` there is no `peerguard` on
/// PATH, so the printed commands name the binary that printed them.
fn own_binary() -> String {
    std::env::current_exe()
        .map(|path| path.display().to_string())
        .unwrap_or_else(|_| "peerguard".to_owned())
}

/// `text` as one shell word: as is when it has nothing a shell would read, else single-quoted.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=,@%+".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// A mesh CA with certificates for the echo workload and for a mesh client, and a separate
/// CA for the app's own TLS (what the app would serve without a mesh).
fn write_pki(dir: &Path) -> anyhow::Result<()> {
    let mesh = DevCa::generate_named(MESH_CA_NAME)?;
    mesh.save(&dir.join("mesh-ca"))?;
    let id = |sa: &str| SpiffeId::new("cluster.local", NAMESPACE, sa);
    mesh.issue_workload(&id("echo")?, VALIDITY)?
        .write_cert_dir(&dir.join("echo-certs"))?;
    mesh.issue_workload(&id("client")?, VALIDITY)?
        .write_cert_dir(&dir.join("client-certs"))?;
    // A mesh identity the demo's AuthorizationPolicy denies.
    mesh.issue_workload(&id("intruder")?, VALIDITY)?
        .write_cert_dir(&dir.join("intruder-certs"))?;
    let app_ca = DevCa::generate_named(APP_CA_NAME)?;
    app_ca
        .issue_server(&["localhost", "127.0.0.1"], VALIDITY)?
        .write_cert_dir(&dir.join("app-tls"))?;
    Ok(())
}

fn app_tls_config(dir: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let credentials = crate::tls::credentials::Credentials::load_dir(&dir.join("app-tls"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            credentials.key.as_ref().clone(),
        )));
    // HTTP/1.1 only: the echo app speaks nothing else.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn policy_yaml(ports: &Ports) -> String {
    format!(
        "# The demo namespace is PERMISSIVE; the echo workload makes one port STRICT and one DISABLE.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: {NAMESPACE}
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: echo
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      app: echo
  mtls:
    mode: UNSET
  portLevelMtls:
    {strict}:
      mode: STRICT
    {disable}:
      mode: DISABLE
---
# Who may connect: the intruder service account never; the client service account over mTLS,
# and anything from this machine (the demo's plaintext and app-TLS calls) otherwise.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-intruder
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      app: echo
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/{NAMESPACE}/sa/intruder]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: echo-callers
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      app: echo
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/{NAMESPACE}/sa/client]
  - from:
    - source:
        ipBlocks: [127.0.0.1/32]
---
# The echo Service (ports named without a protocol prefix: the app protocol stays undeclared),
# and the rule that makes mesh clients send mTLS to it, for `peerguard tls-check`.
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: {NAMESPACE}
spec:
  selector:
    app: echo
  ports:
  - name: permissive
    port: {permissive}
    targetPort: {permissive}
  - name: strict
    port: {strict}
    targetPort: {strict}
  - name: disable
    port: {disable}
    targetPort: {disable}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo
  namespace: {NAMESPACE}
spec:
  host: echo
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
",
        permissive = ports.permissive.1,
        strict = ports.strict.1,
        disable = ports.disable.1,
    )
}

fn run_command_line(dir: &Path, ports: &Ports, mesh_ca: bool) -> Vec<String> {
    let mut line: Vec<String> = vec![own_binary(), "run".into(), "--inbound".into(), "none".into()];
    for (listen, app) in [ports.permissive, ports.strict, ports.disable] {
        line.push("--listen".into());
        line.push(format!("127.0.0.1:{listen}=127.0.0.1:{app}"));
    }
    let path = |p: PathBuf| p.display().to_string();
    line.extend([
        "--namespace".into(),
        NAMESPACE.into(),
        "--labels".into(),
        WORKLOAD_LABELS.into(),
        "--policy".into(),
        path(dir.join("policy.yaml")),
    ]);
    if mesh_ca {
        line.extend([
            "--ca-address".into(),
            format!("127.0.0.1:{}", ports.ca),
            "--ca-root-cert".into(),
            path(dir.join("mesh-ca").join(crate::certs::CA_CERT_FILE)),
            "--ca-token-file".into(),
            path(dir.join(TOKEN_FILE)),
            "--service-account".into(),
            "echo".into(),
            "--cert-ttl".into(),
            MESH_CA_TTL.into(),
        ]);
    } else {
        line.extend(["--cert-dir".into(), path(dir.join("echo-certs"))]);
    }
    line.extend([
        "--admin".into(),
        format!("127.0.0.1:{}", ports.admin),
        "--health".into(),
        format!("127.0.0.1:{}", ports.health),
        // The admin endpoint serves the same scrape; the demo needs no network-facing port.
        "--metrics".into(),
        "none".into(),
    ]);
    line
}

fn instructions(dir: &Path, removed_at_exit: bool, ports: &Ports, run_line: &[String], mesh_ca: bool) -> String {
    let d = shell_word(&dir.display().to_string());
    let files = if removed_at_exit {
        format!("Files are in {d} (removed when the demo stops; --dir DIR keeps them)")
    } else {
        format!("Files are in {d}")
    };
    let peerguard = shell_word(&own_binary());
    let mesh_client = format!(
        "-cert {d}/client-certs/cert-chain.pem -key {d}/client-certs/key.pem -CAfile {d}/client-certs/root-cert.pem"
    );
    let (permissive, strict, disable) = (ports.permissive.0, ports.strict.0, ports.disable.0);
    let certificate = if mesh_ca {
        format!(
            "# 9. The workload certificate came from the demo's mesh CA on 127.0.0.1:{ca} over Istio's gRPC CA service (IstioCertificateService/CreateCertificate); its source, serial and next renewal:
curl -sS http://127.0.0.1:{admin}/config_dump

",
            ca = ports.ca,
            admin = ports.admin,
        )
    } else {
        String::new()
    };
    format!(
        "peerguard demo is running on ports from {base} (Ctrl-C stops it). {files}.
peerguard fronts an echo app (namespace {NAMESPACE}, labels {WORKLOAD_LABELS}) with the policy in {d}/policy.yaml:
  127.0.0.1:{permissive} -> app :{pa}  PERMISSIVE (namespace default)
  127.0.0.1:{strict} -> app :{sa}  STRICT     (portLevelMtls)
  127.0.0.1:{disable} -> app :{da}  DISABLE    (portLevelMtls)
The same proxy, by hand: {run}

Try these in another terminal; each access-log line below says what peerguard decided and why.

# 1. mTLS with a mesh ALPN is terminated; the app gets plaintext, the log shows the peer's SPIFFE ID:
printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -quiet -connect 127.0.0.1:{permissive} -alpn istio {mesh_client}

# 2. The app's own TLS (ALPN h2/http/1.1) passes through untouched; the app's certificate answers:
curl -sS --cacert {d}/app-tls/root-cert.pem https://localhost:{permissive}/
printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -quiet -connect 127.0.0.1:{permissive} -alpn h2,http/1.1 -CAfile {d}/app-tls/root-cert.pem

# 3. Plaintext passes through on a PERMISSIVE port:
curl -sS http://127.0.0.1:{permissive}/

# 4. STRICT refuses plaintext (curl exits 56) and terminates any TLS with a mesh certificate:
curl -sS http://127.0.0.1:{strict}/; echo \"curl exit: $?\"
printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -quiet -connect 127.0.0.1:{strict} -alpn h2 {mesh_client}

# 5. DISABLE passes even mesh mTLS through: the app's own certificate answers the handshake:
printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -quiet -connect 127.0.0.1:{disable} -alpn istio-http/1.1,istio,http/1.1 -CAfile {d}/app-tls/root-cert.pem

# 6. Who may connect: the client's mTLS call in 1. was allowed by demo/echo-callers (see authz_policy in its log line); the intruder's valid certificate is denied by demo/deny-intruder, reset before the app sees a byte:
printf 'GET / HTTP/1.0\\r\\n\\r\\n' | openssl s_client -quiet -connect 127.0.0.1:{permissive} -alpn istio -cert {d}/intruder-certs/cert-chain.pem -key {d}/intruder-certs/key.pem -CAfile {d}/intruder-certs/root-cert.pem; echo \"openssl exit: $?\"

# 7. The client side: a mesh client in {NAMESPACE} sends mTLS to every port of the echo Service (DestinationRule demo/echo); the DISABLE port does not take it (CONFLICT, as 5. showed: the app's own TLS answered):
{peerguard} tls-check --policy {d}/policy.yaml --client-namespace {NAMESPACE}

# 8. Before moving to STRICT: what STRICT would have done to each connection above on the PERMISSIVE and DISABLE ports, and the sources to fix first:
{peerguard} audit --admin 127.0.0.1:{admin}

{certificate}# What would peerguard do, and why (add --principal spiffe://cluster.local/ns/{NAMESPACE}/sa/intruder --port {pa} to ask about a peer):
{peerguard} check --policy {d}/policy.yaml --namespace {NAMESPACE} --labels {WORKLOAD_LABELS}
",
        pa = ports.permissive.1,
        sa = ports.strict.1,
        da = ports.disable.1,
        base = ports.base,
        admin = ports.admin,
        run = run_line.iter().map(|word| shell_word(word)).collect::<Vec<_>>().join(" "),
    )
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;

    fn issuer_of(cert_pem_file: &Path) -> String {
        let pem = std::fs::read(cert_pem_file).unwrap();
        let der: rustls_pki_types::CertificateDer = rustls_pki_types::pem::PemObject::from_pem_slice(&pem).unwrap();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        cert.issuer().to_string()
    }

    #[test]
    fn the_mesh_ca_and_the_apps_own_ca_have_different_names() {
        let dir = std::env::temp_dir().join(format!("peerguard-demo-unit-{}", std::process::id()));
        let _scratch = Scratch(dir.clone());
        write_pki(&dir).unwrap();
        let mesh = issuer_of(&dir.join("echo-certs/cert-chain.pem"));
        let app = issuer_of(&dir.join("app-tls/cert-chain.pem"));
        assert!(mesh.contains(MESH_CA_NAME), "{mesh}");
        assert!(app.contains("peerguard demo app CA"), "{app}");
    }

    #[test]
    fn printed_words_are_quoted_only_when_a_shell_would_read_them() {
        assert_eq!(
            shell_word("/tmp/peerguard-demo-1/policy.yaml"),
            "/tmp/peerguard-demo-1/policy.yaml"
        );
        assert_eq!(
            shell_word("127.0.0.1:18080=127.0.0.1:19080"),
            "127.0.0.1:18080=127.0.0.1:19080"
        );
        assert_eq!(shell_word("/home/a b/peerguard"), "'/home/a b/peerguard'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
