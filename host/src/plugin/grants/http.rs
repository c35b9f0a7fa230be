//! The `allow_http` grant: outbound HTTP(S) to listed origins.
//!
//! Every plugin is linked with `wasi:http`'s outgoing handler (its
//! `http-plugin` world), and every request passes this instance's hooks:
//! one to a granted origin (scheme, host and port, compared before anything
//! is resolved) goes out through wasmtime's sender, HTTPS verified against
//! webpki's roots; any other fails in the plugin with
//! `HTTP-request-denied`, counted and logged at DEBUG.

use std::sync::Arc;

use wasmtime::component::Linker;

use super::Denials;
use crate::plugin::sandbox::Sandbox;

/// An origin granted for HTTP: `http://127.0.0.1:8080`, or
/// `https://*.example.com` for every subdomain (not the domain itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    https: bool,
    /// Lowercase; a leading `*.` matches any subdomains.
    host: String,
    port: u16,
}

impl std::str::FromStr for Origin {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{text:?} must start with http:// or https://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{text:?} must be an origin (scheme, host, optional port), not a URL with a path"
            ));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, _)) if !host.ends_with(']') && host.contains(':') => {
                (authority, default_port)
            }
            Some((host, port)) => (
                host,
                port.parse()
                    .map_err(|_| format!("{text:?} has no valid port"))?,
            ),
            None => (authority, default_port),
        };
        Ok(Self {
            https,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl Origin {
    /// Whether `uri` is a request to this origin: scheme, host and port,
    /// compared before anything is resolved.
    fn admits(&self, uri: &http::Uri) -> bool {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return false,
        };
        let Some(host) = uri.host().map(str::to_ascii_lowercase) else {
            return false;
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_matches = match self.host.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host == self.host,
        };
        https == self.https && port == self.port && host_matches
    }
}

/// `wasi:http`'s outgoing handler, for every plugin; each request passes
/// the instance's [`HttpHooks`].
pub fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// The `wasi:http` hooks of one instance: requests to granted origins go
/// out through wasmtime's sender; any other fails in the plugin with
/// `HTTP-request-denied`.
pub struct HttpHooks {
    origins: Arc<[Origin]>,
    denials: Denials,
}

impl HttpHooks {
    pub fn new(origins: Arc<[Origin]>, denials: &Denials) -> Self {
        Self {
            origins,
            denials: denials.clone(),
        }
    }
}

type Sent = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
            )>,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Sent {
        drop(fut);
        if !self
            .origins
            .iter()
            .any(|origin| origin.admits(request.uri()))
        {
            self.denials.http.increment(1);
            tracing::debug!(plugin = %self.denials.plugin, uri = %request.uri(), "capability denied: http");
            return Box::new(std::future::ready(Err(
                wasmtime_wasi_http::Error::HttpRequestDenied,
            )));
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admits(origin: &str, uri: &str) -> bool {
        origin
            .parse::<Origin>()
            .unwrap()
            .admits(&uri.parse().unwrap())
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        assert!(admits(
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/cm?x=1"
        ));
        assert!(!admits("http://127.0.0.1:8080", "https://127.0.0.1:8080/"));
        assert!(!admits("http://127.0.0.1:8080", "http://127.0.0.1:8081/"));
        assert!(admits(
            "https://Api.Example.com",
            "https://api.example.com:443/v1"
        ));
        assert!(!admits(
            "https://api.example.com",
            "https://api.example.com.evil.net/"
        ));
        assert!(admits("http://[::1]:8080", "http://[::1]:8080/"));
    }

    #[test]
    fn a_wildcard_matches_subdomains_only() {
        assert!(admits("https://*.example.com", "https://a.example.com/"));
        assert!(admits("https://*.example.com", "https://a.b.example.com/"));
        assert!(!admits("https://*.example.com", "https://example.com/"));
        assert!(!admits("https://*.example.com", "https://badexample.com/"));
    }

    #[test]
    fn what_is_not_an_origin_is_refused() {
        for bad in [
            "ftp://x",
            "example.com",
            "https://x.com/path",
            "http://x:port",
            "http://",
        ] {
            assert!(bad.parse::<Origin>().is_err(), "{bad}");
        }
    }
}
