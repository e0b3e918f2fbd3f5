//! `peerguard demo`: a complete local sandbox on built-in defaults. A throwaway mesh CA, an
//! echo app that speaks plaintext and its own TLS on three ports, peerguard in front of it with
//! one PERMISSIVE, one STRICT and one DISABLE port, and the commands that show each behaviour.

mod echo_app;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use crate::certs::DevCa;
use crate::cli::{Cli, Command, DemoArgs};
use crate::tls::identity::SpiffeId;

const NAMESPACE: &str = "demo";
const WORKLOAD_LABELS: &str = "app=echo";
/// Certificates outlive any demo session but not a forgotten directory.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The demo's ports: peerguard listens on `base + 80..`, the app on `base + 1080..`.
struct Ports {
    permissive: (u16, u16),
    strict: (u16, u16),
    disable: (u16, u16),
    admin: u16,
    health: u16,
}

impl Ports {
    fn from_base(base: u16) -> anyhow::Result<Ports> {
        let at = |offset: u16| {
            base.checked_add(offset)
                .context("--base-port is too high: the demo needs base+1100")
        };
        Ok(Ports {
            permissive: (at(80)?, at(1080)?),
            strict: (at(81)?, at(1081)?),
            disable: (at(82)?, at(1082)?),
            admin: at(1000)?,
            health: at(1021)?,
        })
    }
}

pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(demo(args))
}

async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("peerguard-demo-{}", std::process::id())),
    };
    let ports = Ports::from_base(args.base_port)?;
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

    let run_line = run_command_line(&dir, &ports);
    let Command::Run(run_args) = Cli::try_parse_from(&run_line)?.command else {
        anyhow::bail!("the demo's own run command line did not parse as `run`");
    };
    let config = crate::config::Config::from_args(&run_args)?;
    let running = crate::app::start(&config).await?;

    println!("{}", instructions(&dir, &ports, &run_line));
    tokio::signal::ctrl_c().await?;
    running
        .drain(crate::config::DrainTimes {
            accept: Duration::ZERO,
            timeout: Duration::from_secs(1),
        })
        .await;
    Ok(())
}

/// A mesh CA with certificates for the echo workload and for a mesh client, and a separate
/// CA for the app's own TLS (what the app would serve without a mesh).
fn write_pki(dir: &Path) -> anyhow::Result<()> {
    let mesh = DevCa::generate()?;
    mesh.save(&dir.join("mesh-ca"))?;
    let id = |sa: &str| SpiffeId::new("cluster.local", NAMESPACE, sa);
    mesh.issue_workload(&id("echo")?, VALIDITY)?
        .write_cert_dir(&dir.join("echo-certs"))?;
    mesh.issue_workload(&id("client")?, VALIDITY)?
        .write_cert_dir(&dir.join("client-certs"))?;
    let app_ca = DevCa::generate()?;
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
",
        strict = ports.strict.1,
        disable = ports.disable.1,
    )
}

fn run_command_line(dir: &Path, ports: &Ports) -> Vec<String> {
    let mut line: Vec<String> = ["peerguard", "run", "--inbound", "none"].map(String::from).to_vec();
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
        "--cert-dir".into(),
        path(dir.join("echo-certs")),
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

fn instructions(dir: &Path, ports: &Ports, run_line: &[String]) -> String {
    let d = dir.display();
    let mesh_client = format!(
        "-cert {d}/client-certs/cert-chain.pem -key {d}/client-certs/key.pem -CAfile {d}/client-certs/root-cert.pem"
    );
    let (permissive, strict, disable) = (ports.permissive.0, ports.strict.0, ports.disable.0);
    format!(
        "peerguard demo is running (Ctrl-C stops it). Files are in {d}.
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

# What would peerguard do, and why:
peerguard check --policy {d}/policy.yaml --namespace {NAMESPACE} --labels {WORKLOAD_LABELS}
",
        pa = ports.permissive.1,
        sa = ports.strict.1,
        da = ports.disable.1,
        run = run_line.join(" "),
    )
}
