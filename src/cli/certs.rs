//! `nodedb-cluster certs`: the cluster CA and the node, admin and client certificates it
//! signs (PEM files, keys 0600). Each certificate carries its holder's role; it is valid
//! for a year, and rotating it means issuing a new one and restarting what uses it.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use nodedb_cluster::ids::NodeId;
use nodedb_cluster::runtime::tls;

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a cluster CA: DIR/ca.pem and DIR/ca.key.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Name written into the CA certificate.
        #[arg(long, default_value = "nodedb")]
        cluster: String,
        /// Replace an existing CA (every certificate it issued stops being trusted).
        #[arg(long)]
        force: bool,
    },
    /// Issue DIR/node-<ID>.pem and .key, signed by the CA in DIR.
    Node {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
        /// Extra subject alternative names (IP addresses or DNS names); repeatable.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
    /// Issue DIR/client-<NAME>.pem and .key for a client (data reads and writes), signed
    /// by the CA in DIR.
    Client {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Issue DIR/admin-<NAME>.pem and .key for an operator: a client that may also move
    /// replicas, abandon moves and change node states (`kv move`, `kv abandon-move`).
    Admin {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
}

/// A client or admin name: letters, digits, '-' or '_'.
fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!("name {name:?} must be letters, digits, '-' or '_'"))
    }
}

/// Writes what `command` asks for; returns the files written.
pub fn run(command: CertsCommand) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let load_ca = |dir: &Path| -> Result<tls::CertifiedKeyPem, Box<dyn std::error::Error>> {
        let ca = tls::read_pem_pair(&dir.join(tls::CA_CERT_FILE), &dir.join(tls::CA_KEY_FILE))
            .map_err(|e| {
                format!(
                    "{e} (create the CA first: nodedb-cluster certs init --dir {})",
                    dir.display()
                )
            })?;
        Ok(ca)
    };
    let (cert, key) = match command {
        CertsCommand::Init {
            dir,
            cluster,
            force,
        } => {
            if dir.join(tls::CA_KEY_FILE).exists() && !force {
                return Err(format!(
                    "{} already holds a CA; pass --force to replace it (certificates it issued stop being trusted)",
                    dir.display()
                )
                .into());
            }
            tls::write_pem_pair(&dir, "ca", &tls::generate_ca(&cluster)?)?
        }
        CertsCommand::Node { dir, id, sans } => {
            let ca = load_ca(&dir)?;
            tls::write_pem_pair(
                &dir,
                &format!("node-{id}"),
                &tls::issue_node_cert(&ca, NodeId(id), &sans)?,
            )?
        }
        CertsCommand::Client { dir, name } => {
            check_name(&name)?;
            let ca = load_ca(&dir)?;
            tls::write_pem_pair(
                &dir,
                &format!("client-{name}"),
                &tls::issue_client_cert(&ca, &name)?,
            )?
        }
        CertsCommand::Admin { dir, name } => {
            check_name(&name)?;
            let ca = load_ca(&dir)?;
            tls::write_pem_pair(
                &dir,
                &format!("admin-{name}"),
                &tls::issue_admin_cert(&ca, &name)?,
            )?
        }
    };
    Ok(vec![cert, key])
}
