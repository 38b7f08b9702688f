//! HTTPS client of the agents' admin API, authenticated with the operator's certificate.
//!
//! Every failure becomes one line saying what failed where: unreachable, certificate refused,
//! an error answer from the agent, or an answer that does not parse.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;
use siteagent::api::{ApiError, MemberView, Status};
use wan::FabricTls;

use crate::context::Context;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<SocketAddr>,
    /// Per-request time limit, when shorter than the client's default (20 s).
    timeout: Option<Duration>,
}

fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    if msg.contains("Connection refused") {
        "connection refused (is the agent running?)".into()
    } else if msg.contains("CertificateRequired")
        || msg.contains("certificate")
        || msg.contains("alert")
        || msg.contains("handshake")
    {
        format!("TLS handshake refused: {msg}")
    } else {
        msg
    }
}

impl Client {
    pub fn new(ctx: &Context) -> anyhow::Result<Self> {
        let tls = FabricTls::load(&ctx.tls).context("operator certificates")?;
        let mut config = tls.client_config(false)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(3))
            .pool_max_idle_per_host(64)
            .build()
            .context("http client")?;
        Ok(Self {
            http,
            endpoints: ctx.endpoints.clone(),
            timeout: None,
        })
    }

    /// The same client with a shorter limit per request (e.g. for drills that must not hang
    /// on a frozen agent).
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// The same client asking these endpoints, in order.
    pub fn with_endpoints(&self, endpoints: Vec<SocketAddr>) -> Self {
        Self {
            endpoints,
            ..self.clone()
        }
    }

    /// A client that talks to one endpoint only.
    pub fn pinned(&self, endpoint: SocketAddr) -> Self {
        self.with_endpoints(vec![endpoint])
    }

    /// A client pinned to the Raft leader's admin API (writes that must run there): the
    /// leader's id from `/v1/status`, its admin address from `/v1/members`.
    pub async fn leader(&self) -> anyhow::Result<Self> {
        let status: Status = self.get("/v1/status").await?;
        let leader = status.leader.context("the fabric has no leader")?;
        let members: Vec<MemberView> = self.get("/v1/members").await?;
        let admin = members
            .iter()
            .find(|m| m.node == leader)
            .and_then(|m| m.admin_address.parse().ok())
            .with_context(|| format!("leader {leader} has no admin address"))?;
        Ok(self.pinned(admin))
    }

    async fn send<T: DeserializeOwned>(
        &self,
        build: impl Fn(&reqwest::Client, String) -> reqwest::RequestBuilder,
        path: &str,
    ) -> anyhow::Result<T> {
        let (ep, bytes) = self.fetch(build, path).await?;
        serde_json::from_slice(&bytes).map_err(|e| anyhow!("{ep}: malformed answer to {path}: {e}"))
    }

    /// `GET path` as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let (ep, bytes) = self.fetch(|c, url| c.get(url), path).await?;
        String::from_utf8(bytes).map_err(|_| anyhow!("{ep}: {path} is not UTF-8"))
    }

    /// The first endpoint's successful answer, with that endpoint.
    async fn fetch(
        &self,
        build: impl Fn(&reqwest::Client, String) -> reqwest::RequestBuilder,
        path: &str,
    ) -> anyhow::Result<(SocketAddr, Vec<u8>)> {
        let mut errors = Vec::new();
        for ep in &self.endpoints {
            let url = format!("https://{ep}{path}");
            let mut request = build(&self.http, url);
            if let Some(limit) = self.timeout {
                request = request.timeout(limit);
            }
            let resp = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    // Unreachable or refused: try the next endpoint.
                    errors.push(format!("{ep}: {}", describe(&e)));
                    continue;
                }
            };
            let status = resp.status();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| anyhow!("{ep}: reading the answer: {}", describe(&e)))?;
            if !status.is_success() {
                let msg = serde_json::from_slice::<ApiError>(&bytes)
                    .map(|e| format!("{} ({})", e.error, e.kind))
                    .unwrap_or_else(|_| {
                        String::from_utf8_lossy(&bytes).chars().take(200).collect()
                    });
                return Err(anyhow!("{ep}: {status}: {msg}"));
            }
            return Ok((*ep, bytes.to_vec()));
        }
        Err(anyhow!("no agent answered: {}", errors.join("; ")))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(|c, url| c.get(url), path).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(|c, url| c.delete(url), path).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send_json(reqwest::Method::PUT, path, body).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send_json(reqwest::Method::POST, path, body).await
    }

    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_vec(body)?;
        self.send(
            |c, url| {
                c.request(method.clone(), url)
                    .header("content-type", "application/json")
                    .body(body.clone())
            },
            path,
        )
        .await
    }
}
