//! `GET /enroll`: the enrollment page. Static HTML rendered once at start (the organisation's name
//! is the only variable), with a small inline script that creates a ticket, points the download
//! link at it and polls the ticket's status. Without JavaScript the link downloads an untied
//! profile and everything still works; only the status line stays static.
//!
//! Served with a strict Content-Security-Policy: nothing but the inline script and style, allowed
//! by their SHA-256 hashes, and `fetch` to this origin.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use crate::http_util::{Reply, with_type};

const TEMPLATE: &str = include_str!("page.html");
const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

#[derive(Debug)]
pub(super) struct Page {
    html: Bytes,
    csp: HeaderValue,
}

impl Page {
    pub(super) fn render(organization: &str) -> Page {
        let html = TEMPLATE
            .replace("{{ORG}}", &escape(organization))
            .replace("{{STYLE}}", STYLE)
            .replace("{{SCRIPT}}", SCRIPT);
        let csp = format!(
            "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; img-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(SCRIPT),
            hash(STYLE)
        );
        Page { html: Bytes::from(html), csp: HeaderValue::from_str(&csp).expect("CSP is ASCII") }
    }

    pub(super) fn reply(&self) -> Reply {
        let mut r = with_type(StatusCode::OK, "text/html; charset=utf-8", self.html.clone());
        let h = r.headers_mut();
        h.insert(http::header::CONTENT_SECURITY_POLICY, self.csp.clone());
        h.insert(http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h.insert(http::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

/// `'sha256-<base64>'` source expression for an inline element's exact text.
fn hash(text: &str) -> String {
    format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes())))
}

/// Text for HTML element content (the organisation name comes from configuration).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organisation_is_escaped_everywhere() {
        let page = Page::render("A&B <Corp>");
        let html = std::str::from_utf8(&page.html).expect("utf-8");
        assert!(!html.contains("{{"), "every placeholder filled");
        assert!(html.contains("A&amp;B &lt;Corp&gt; device management"));
        assert!(!html.contains("<Corp>"));
    }

    #[test]
    fn csp_hashes_the_inline_script_and_style_exactly() {
        let page = Page::render("Org");
        let html = std::str::from_utf8(&page.html).expect("utf-8");
        let inner = |open: &str, close: &str| {
            let start = html.find(open).expect("open tag") + open.len();
            let end = start + html[start..].find(close).expect("close tag");
            html[start..end].to_owned()
        };
        let csp = page.csp.to_str().expect("ascii");
        assert!(csp.contains(&format!("script-src '{}'", hash(&inner("<script>", "</script>")))), "{csp}");
        assert!(csp.contains(&format!("style-src '{}'", hash(&inner("<style>", "</style>")))), "{csp}");
        assert!(csp.starts_with("default-src 'none';"));
        assert!(!csp.contains("unsafe"), "no unsafe-inline or unsafe-eval");
    }
}
