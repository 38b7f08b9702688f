//! The context file that tells `sitectl` where the fabric is and who the operator is.
//!
//! ```toml
//! endpoints = ["127.10.1.1:7443", "127.10.2.1:7443"]   # admin API addresses, tried in order
//! [tls]
//! ca = "pki/ca.crt"
//! cert = "pki/operator-admin.crt"
//! key = "pki/operator-admin.key"
//! ```
//! Relative paths are relative to the context file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use wan::TlsFiles;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Admin API addresses (`ip:port`) of agents, tried in order.
    pub endpoints: Vec<SocketAddr>,
    /// The operator's certificates.
    pub tls: TlsFiles,
}

impl Context {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read context file {}", path.display()))?;
        let mut ctx: Context = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "context file {}: {}",
                path.display(),
                crate::toml_file::describe(&e, &text)
            )
        })?;
        if ctx.endpoints.is_empty() {
            bail!("context file {}: `endpoints` is empty", path.display());
        }
        let base = path.parent().unwrap_or(Path::new("."));
        ctx.tls = ctx.tls.relative_to(base);
        Ok(ctx)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Where the context comes from: `--context`, else `SITECTL_CONTEXT`.
pub fn resolve(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    flag.or_else(|| std::env::var_os("SITECTL_CONTEXT").map(PathBuf::from))
        .context("no context: pass --context FILE or set SITECTL_CONTEXT (a lab writes DIR/context.toml)")
}
