//! The plain `GET`s of the one port: the browser client's files from `www/`, `/stats`, and
//! `/metrics` (operating it).

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use log::debug;

use super::Context;
use crate::http::{self, RequestHead};
use crate::hub::Event;
use crate::metrics::exposition::CONTENT_TYPE;
use crate::metrics::{self, Scrape, process::Process};

/// How long `GET /stats` waits for the hub.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers a plain (not upgrade) `GET`.
pub fn answer(socket: &TcpStream, context: &Context, request: &RequestHead) {
    let result = match request.path.as_str() {
        "/stats" => {
            let (reply, answer) = mpsc::channel();
            let _ = context.hub.send(Event::Stats { reply });
            match answer.recv_timeout(STATS_TIMEOUT) {
                Ok(stats) => {
                    let body = serde_json::to_vec(&stats).expect("stats serialize");
                    http::respond(socket, 200, "application/json", &[], &body)
                }
                Err(_) => http::respond_error(socket, 503, "the hub is not answering", &[]),
            }
        }
        "/metrics" => {
            let body = scrape(context);
            http::respond(socket, 200, CONTENT_TYPE, &[], body.as_bytes())
        }
        "/chat" | "/echo" => http::respond_error(
            socket,
            426,
            "this is a WebSocket endpoint: connect with new WebSocket(url)",
            &[("Upgrade", "websocket")],
        ),
        path => match static_file(&context.config.www_dir, path) {
            Some((file, content_type)) => match fs::read(&file) {
                Ok(body) => http::respond(socket, 200, content_type, &[], &body),
                Err(_) => http::respond_error(socket, 404, "not found", &[]),
            },
            None => http::respond_error(socket, 404, "not found", &[]),
        },
    };
    if let Err(err) = result {
        debug!("could not answer {:?}: {err}", request.path);
    }
}

/// The exposition of `GET /metrics`: the counters, and what the budgets and `/proc` say now.
/// Nothing here waits on the hub (its figures are atomics it publishes after each batch).
pub fn scrape(context: &Context) -> String {
    let scrape = Scrape {
        handshakes: context.budget.in_use().1,
        queued_bytes: context.outbound.queued_bytes(),
        process: Process::read(),
    };
    metrics::render(&context.metrics, &scrape)
}

/// The file under `www` that a URL path names, with its content type. `None` (404) for
/// anything that is not a plain file inside `www`: `..`, hidden files, or a link out.
pub fn static_file(www: &Path, path: &str) -> Option<(PathBuf, &'static str)> {
    let relative = match path {
        "/" => "client.html",
        _ => path.strip_prefix('/')?,
    };
    let safe_segment = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains(['\\', '\0']);
    if !relative.split('/').all(safe_segment) {
        return None;
    }
    let file = www.join(relative);
    // A symlink inside www/ could still point outside it.
    let real = fs::canonicalize(&file).ok()?;
    if !real.starts_with(fs::canonicalize(www).ok()?) || !real.is_file() {
        return None;
    }
    let content_type = match file.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    };
    Some((real, content_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step0_static_paths_stay_inside_www() {
        let www = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        assert!(static_file(&www, "/lib.rs").is_some());
        for bad in [
            "/../Cargo.toml",
            "/./lib.rs",
            "/.hidden",
            "//lib.rs",
            "/nope.rs",
            "/lib.rs/",
        ] {
            assert!(static_file(&www, bad).is_none(), "{bad}");
        }
    }
}
