//! `hub::fetch` against a local stand-in for the Hub's file endpoint (`/ORG/NAME/resolve/REV/FILE`,
//! answering ranged GETs with the `x-repo-commit` and `etag` headers the Hub sends): the file lands
//! in the cache as every Hub client lays it out, a second fetch downloads nothing, and offline
//! settings never connect.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use dmlp_pretrained::{HubRepo, HubSettings, WeightsSource, hub, resolve, sha256_file};

const COMMIT: &str = "1234567890abcdef1234567890abcdef12345678";

/// Serves `body` at `/org/tiny/resolve/main/model.safetensors`; records each request line and
/// its Range header.
fn serve(body: Vec<u8>, sha256: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(value.trim().to_owned());
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or_default().to_owned();
            seen.lock().unwrap().push(format!("{path} {}", range.clone().unwrap_or_default()));
            let response = if path != "/org/tiny/resolve/main/model.safetensors" {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            } else {
                let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
                    Some((s, e)) => {
                        let s: usize = s.parse().unwrap_or(0);
                        (s, e.parse::<usize>().map_or(body.len(), |e| e + 1))
                    }
                    None => (0, body.len()),
                };
                let part = &body[start.min(body.len())..end.min(body.len())];
                let mut head = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\n\
                     X-Repo-Commit: {COMMIT}\r\nETag: \"{sha256}\"\r\nConnection: close\r\n\r\n",
                    part.len(),
                    end.saturating_sub(1),
                    body.len()
                )
                .into_bytes();
                head.extend_from_slice(part);
                head
            };
            let _ = stream.write_all(&response);
        }
    });
    (endpoint, log)
}

fn tiny_repo() -> HubRepo {
    let WeightsSource::Hub(repo) = WeightsSource::parse("hf:org/tiny").unwrap() else { unreachable!() };
    repo
}

#[test]
fn fetch_downloads_into_the_hub_layout_once() {
    let tmp = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(tmp.path().join("expected"), &body).unwrap();
    let (sha256, _) = sha256_file(&tmp.path().join("expected")).unwrap();
    let (endpoint, log) = serve(body.clone(), sha256.clone());
    let cache = tmp.path().join("hub");
    let online = HubSettings { offline: false, endpoint, ..HubSettings::offline(&cache) };

    let file = hub::fetch(&online, &tiny_repo()).unwrap();
    assert_eq!(file.origin.commit, COMMIT);
    let repo_dir = cache.join("models--org--tiny");
    assert_eq!(file.path, repo_dir.join("snapshots").join(COMMIT).join("model.safetensors"));
    assert_eq!(std::fs::read(&file.path).unwrap(), body);
    assert!(repo_dir.join("blobs").join(&sha256).is_file(), "the blob is named by its etag, the SHA-256");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap().trim(), COMMIT);
    let requests_after_first = log.lock().unwrap().len();

    // Up to date: one metadata request, no second download.
    hub::fetch(&online, &tiny_repo()).unwrap();
    let requests: Vec<String> = log.lock().unwrap()[requests_after_first..].to_vec();
    assert_eq!(requests, ["/org/tiny/resolve/main/model.safetensors 0-0"], "{requests:?}");

    // Offline, the cached file is found without a connection, and its hash is the server's.
    let count = log.lock().unwrap().len();
    let resolved = resolve("hf:org/tiny", std::path::Path::new(""), &HubSettings::offline(&cache)).unwrap();
    assert_eq!(resolved.sha256, sha256);
    assert!(resolved.warnings.is_empty(), "{:?}", resolved.warnings);
    assert_eq!(log.lock().unwrap().len(), count, "offline must not connect");
}

#[test]
fn a_missing_repository_is_a_download_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (endpoint, _) = serve(Vec::new(), String::new());
    let online = HubSettings { offline: false, endpoint: endpoint.clone(), ..HubSettings::offline(tmp.path()) };
    let WeightsSource::Hub(repo) = WeightsSource::parse("hf:org/absent").unwrap() else { unreachable!() };
    let err = hub::fetch(&online, &repo).unwrap_err().to_string();
    assert!(err.contains("org/absent") && err.contains(&endpoint) && err.contains("404"), "{err}");
}
