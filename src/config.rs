//! The command line (see docs/reference.md): every flag has a default, and a bad flag or
//! value is one line on stderr and exit status 2, before anything listens.

use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

use crate::capacity::AddressBlock;
use crate::history::Fsync;
use crate::secret::Secret;

/// What `--help` prints: every flag, its default, and an example.
pub const USAGE: &str = "\
usage: cyberchat [FLAGS]

A WebSocket chat server: ws://HOST:PORT/ for the chat (/echo for the tutorial's echo step),
http://HOST:PORT/ for the browser client, /stats for figures, /metrics for Prometheus.
Ctrl-C or SIGTERM closes every client with 1001 and stops.

  --host H                  address to listen on (0.0.0.0: every interface)   [127.0.0.1]
  --port P                  port; 0 picks a free one; wins over $PORT          [$PORT, else 1337]
  --allow-origin O          only pages from this Origin may open WebSockets; repeatable;
                            null = pages opened from disk                     [any origin]
  --max-rate N              frames a second per chat connection (a bucket of 2N); 0 = off  [20]
  --ping-interval S         seconds between pings (0.01 to 86400); a client silent for 2.5
                            intervals is closed                                [30]
  --max-connections N       open WebSockets on both doors, lowered to what the OS allows  [10000]
  --max-handshakes N        connections still in their HTTP head (handshakes, plain GETs)  [2048]
  --max-handshakes-per-ip N of those, from one address (IPv6: one /64)          [256]
  --data-dir DIR            keep each channel's history in DIR/<channel>.jsonl  [none: memory]
  --fsync always|never      with --data-dir, wait for the disk on every message [never]
  --redis URL               one chat with every server given the same Redis, e.g.
                            redis://127.0.0.1:6379/ (history lives there)  [none: alone]
  --redis-prefix P          the keys' prefix in Redis: one chat per prefix  [cyberchat]
  --room-code CODE          a chat connection must send this code to get in; also
                            $CYBERCHAT_ROOM_CODE (1 to 128 printable ASCII, no spaces)  [none: open]
  --operator-token TOKEN    whoever sends this token is an operator (kick, mute, ban); also
                            $CYBERCHAT_OPERATOR_TOKEN                          [none: no operators]
  --trust-proxy ADDR        a reverse proxy at this IP or CIDR block; its X-Forwarded-For
                            names the client address; repeatable              [none: ignored]
  --www DIR                 where the browser client is served from  [./www, else the crate's]
  --log-level L             off, error, warn, info, debug or trace; also $CYBERCHAT_LOG  [info]
  --help                    this text

A bad flag or value prints one line and exits with status 2; a port in use exits with 1.

Example: a class on the local network, history kept across restarts:
  cyberchat --host 0.0.0.0 --port 8080 --data-dir ./history
A public class chat behind nginx on this machine, the code kept out of `ps`:
  CYBERCHAT_ROOM_CODE=... CYBERCHAT_OPERATOR_TOKEN=... cyberchat --trust-proxy 127.0.0.1
Two servers, one chat (a Redis on this machine):
  cyberchat --port 8080 --redis redis://127.0.0.1:6379/ & cyberchat --port 8081 --redis redis://127.0.0.1:6379/";

/// The shortest ping interval: below it pings would flood clients (and a zero read timeout
/// is not a timeout at all).
const MIN_PING_SECS: f64 = 0.01;

/// Everything the server can be told at start. [`Config::default`] is what `cyberchat` with no
/// flags runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Origins allowed to open WebSockets; empty allows every origin.
    pub allow_origins: Vec<String>,
    /// Frames a second per chat connection (the bucket holds twice this); 0 turns it off.
    pub max_rate: u32,
    pub ping_interval: Duration,
    /// Open WebSocket connections on both doors.
    pub max_connections: usize,
    /// Connections whose HTTP head is still being read or answered (handshakes in progress
    /// and plain HTTP requests), in all.
    pub max_handshakes: usize,
    /// Of those, from one address (an IPv6 /64). Generous: a whole class may sit behind one
    /// NAT address.
    pub max_handshakes_per_address: usize,
    /// Bytes that may wait in every client's outbox together before clients that do not
    /// read are dropped (each also has its own 4 MiB).
    pub max_queued_bytes: usize,
    pub data_dir: Option<PathBuf>,
    pub fsync: Fsync,
    /// Where the browser client's files are served from.
    pub www_dir: PathBuf,
    /// With a URL: one of several servers sharing this Redis (see [`crate::cluster`]).
    pub redis: Option<String>,
    /// The prefix of every key in Redis.
    pub redis_prefix: String,
    pub log_level: LevelFilter,
    /// With a code: a chat connection is locked until it sends it (see `doors/locked.rs`).
    pub room_code: Option<Secret>,
    /// With a token: whoever sends it is an operator.
    pub operator_token: Option<Secret>,
    /// Reverse proxies whose `X-Forwarded-For` names the client address.
    pub trust_proxy: Vec<AddressBlock>,
    /// How long a chat connection may stay locked before it is closed with 4003. Not a flag:
    /// the reference says 30 s; tests shorten it.
    pub locked_for: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 1337,
            allow_origins: Vec::new(),
            max_rate: 20,
            ping_interval: Duration::from_secs(30),
            max_connections: 10_000,
            max_handshakes: 2048,
            max_handshakes_per_address: 256,
            max_queued_bytes: 256 << 20,
            data_dir: None,
            fsync: Fsync::Never,
            www_dir: default_www_dir(),
            redis: None,
            redis_prefix: "cyberchat".into(),
            log_level: LevelFilter::Info,
            room_code: None,
            operator_token: None,
            trust_proxy: Vec::new(),
            locked_for: Duration::from_secs(30),
        }
    }
}

/// `www/` in the working directory when there is one, else the one beside this crate's
/// sources, so `cargo run` serves the client from any directory.
fn default_www_dir() -> PathBuf {
    let local = PathBuf::from("www");
    if local.join("client.html").is_file() {
        local
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("www")
    }
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // made once per run
pub enum Command {
    Run(Config),
    Help,
}

impl Config {
    /// Parses the arguments (without the program name) and the `PORT` and `CYBERCHAT_LOG`
    /// environment values.
    ///
    /// # Errors
    /// A one-line message naming the bad flag or value.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        port_env: Option<&str>,
        log_env: Option<&str>,
    ) -> Result<Command, String> {
        let mut config = Config::default();
        let mut port_flag = false;
        if let Some(level) = log_env {
            config.log_level = parse_level(level).map_err(|e| format!("CYBERCHAT_LOG: {e}"))?;
        }
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            // Both `--flag value` and `--flag=value`.
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            if flag == "--help" || flag == "-h" {
                return Ok(Command::Help);
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--host" => config.host = non_empty(&flag, value()?)?,
                "--port" => {
                    config.port = parse_port(&value()?).map_err(|e| format!("--port: {e}"))?;
                    port_flag = true;
                }
                "--allow-origin" => config.allow_origins.push(non_empty(&flag, value()?)?),
                "--max-rate" => config.max_rate = parse_number(&flag, &value()?)?,
                "--ping-interval" => {
                    let v = value()?;
                    let secs: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| (MIN_PING_SECS..=86_400.0).contains(s))
                        .ok_or_else(|| {
                            format!("--ping-interval: {v:?} is not a number of seconds from {MIN_PING_SECS} to 86400")
                        })?;
                    config.ping_interval = Duration::from_secs_f64(secs);
                }
                "--max-connections" => {
                    config.max_connections = parse_number(&flag, &value()?)?;
                    if config.max_connections == 0 {
                        return Err("--max-connections: must be at least 1".into());
                    }
                }
                "--max-handshakes" => {
                    config.max_handshakes = parse_positive(&flag, &value()?)?;
                }
                "--max-handshakes-per-ip" => {
                    config.max_handshakes_per_address = parse_positive(&flag, &value()?)?;
                }
                "--data-dir" => config.data_dir = Some(PathBuf::from(non_empty(&flag, value()?)?)),
                "--fsync" => {
                    config.fsync = match value()?.as_str() {
                        "always" => Fsync::Always,
                        "never" => Fsync::Never,
                        other => return Err(format!("--fsync: {other:?} is not always or never")),
                    }
                }
                "--www" => config.www_dir = PathBuf::from(non_empty(&flag, value()?)?),
                "--room-code" => config.room_code = Some(secret(&flag, &value()?)?),
                "--operator-token" => config.operator_token = Some(secret(&flag, &value()?)?),
                "--trust-proxy" => config
                    .trust_proxy
                    .push(AddressBlock::parse(&value()?).map_err(|e| format!("{flag}: {e}"))?),
                "--redis" => config.redis = Some(parse_redis(&value()?)?),
                "--redis-prefix" => config.redis_prefix = non_empty(&flag, value()?)?,
                "--log-level" => {
                    config.log_level =
                        parse_level(&value()?).map_err(|e| format!("--log-level: {e}"))?;
                }
                _ => return Err(format!("unknown flag {arg:?} (try --help)")),
            }
        }
        if config.redis.is_some() && config.data_dir.is_some() {
            return Err(
                "--data-dir and --redis do not go together: with --redis, history \
                        lives in Redis (give Redis persistence to keep it)"
                    .into(),
            );
        }
        if let Some(port) = port_env.filter(|_| !port_flag) {
            config.port = parse_port(port).map_err(|e| format!("PORT: {e}"))?;
        }
        Ok(Command::Run(config))
    }

    /// Takes the room code and the operator token from `CYBERCHAT_ROOM_CODE` and
    /// `CYBERCHAT_OPERATOR_TOKEN` (their values given here), where no flag gave them: a flag
    /// wins over its variable, and a secret in the environment stays out of `ps`.
    ///
    /// # Errors
    /// A one-line message naming the variable, never its value; or saying that the token is
    /// the room code (anyone let in could be an operator).
    pub fn secrets_from_environment(
        &mut self,
        room_code: Option<&str>,
        operator_token: Option<&str>,
    ) -> Result<(), String> {
        if self.room_code.is_none()
            && let Some(code) = room_code
        {
            self.room_code = Some(secret("CYBERCHAT_ROOM_CODE", code)?);
        }
        if self.operator_token.is_none()
            && let Some(token) = operator_token
        {
            self.operator_token = Some(secret("CYBERCHAT_OPERATOR_TOKEN", token)?);
        }
        // Whoever is given the room code could otherwise make themselves an operator with it.
        if self.room_code.is_some() && self.room_code == self.operator_token {
            return Err("the operator token must not be the room code: pick another".into());
        }
        Ok(())
    }
}

/// A code or token; the error names where it came from, never what it is.
fn secret(from: &str, value: &str) -> Result<Secret, String> {
    Secret::parse(value).map_err(|rule| format!("{from}: {rule}"))
}

/// A `--redis` URL the client can use; refused in a build without Redis.
fn parse_redis(url: &str) -> Result<String, String> {
    #[cfg(feature = "redis")]
    {
        crate::cluster::redis::check_url(url).map_err(|e| format!("--redis: {url:?}: {e}"))?;
        Ok(url.to_owned())
    }
    #[cfg(not(feature = "redis"))]
    {
        Err(format!(
            "--redis {url:?}: this build has no Redis support (built without the `redis` feature)"
        ))
    }
}

fn non_empty(flag: &str, value: String) -> Result<String, String> {
    if value.is_empty() {
        Err(format!("{flag} needs a non-empty value"))
    } else {
        Ok(value)
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a port number (0 to 65535)"))
}

fn parse_number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a whole number"))
}

fn parse_positive(flag: &str, value: &str) -> Result<usize, String> {
    match parse_number(flag, value)? {
        0 => Err(format!("{flag}: must be at least 1")),
        n => Ok(n),
    }
}

fn parse_level(value: &str) -> Result<LevelFilter, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not one of off, error, warn, info, debug, trace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], port: Option<&str>) -> Result<Config, String> {
        match Config::parse(args.iter().map(|s| s.to_string()), port, None)? {
            Command::Run(config) => Ok(config),
            Command::Help => Err("help".into()),
        }
    }

    #[test]
    fn cli_defaults_are_the_references() {
        let c = parse(&[], None).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.max_rate),
            ("127.0.0.1", 1337, 20)
        );
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.max_connections, 10_000);
        assert!(c.allow_origins.is_empty() && c.data_dir.is_none());
    }

    #[test]
    fn cli_every_flag_is_read() {
        let c = parse(
            &[
                "--host",
                "0.0.0.0",
                "--port=0",
                "--allow-origin",
                "null",
                "--allow-origin",
                "http://a.test",
                "--max-rate",
                "0",
                "--ping-interval",
                "0.5",
                "--max-connections",
                "7",
                "--max-handshakes",
                "9",
                "--max-handshakes-per-ip=3",
                "--data-dir",
                "/tmp/x",
                "--fsync",
                "always",
                "--log-level",
                "debug",
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.host, "0.0.0.0");
        assert_eq!(c.port, 0);
        assert_eq!(c.allow_origins, ["null", "http://a.test"]);
        assert_eq!(c.max_rate, 0);
        assert_eq!(c.ping_interval, Duration::from_millis(500));
        assert_eq!(c.max_connections, 7);
        assert_eq!((c.max_handshakes, c.max_handshakes_per_address), (9, 3));
        assert_eq!(c.data_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(c.fsync, Fsync::Always);
        assert_eq!(c.log_level, LevelFilter::Debug);
    }

    #[test]
    fn cli_port_flag_wins_over_the_environment() {
        assert_eq!(parse(&[], Some("8080")).unwrap().port, 8080);
        assert_eq!(parse(&["--port", "9000"], Some("8080")).unwrap().port, 9000);
        assert_eq!(parse(&["--port", "9000"], Some("junk")).unwrap().port, 9000);
        assert!(parse(&[], Some("junk")).unwrap_err().starts_with("PORT"));
    }

    #[test]
    fn cli_bad_flags_are_one_line_errors() {
        for args in [
            &["--port", "70000"][..],
            &["--port"],
            &["--ping-interval", "0"],
            &["--ping-interval", "nan"],
            &["--ping-interval", "1e-10"],
            &["--max-rate", "-1"],
            &["--max-connections", "0"],
            &["--max-handshakes", "0"],
            &["--max-handshakes-per-ip", "x"],
            &["--fsync", "sometimes"],
            &["--bogus"],
            &["--log-level", "loud"],
        ] {
            let err = parse(args, None).unwrap_err();
            assert!(!err.contains('\n') && !err.is_empty(), "{args:?}: {err}");
        }
        assert_eq!(parse(&["--help"], None).unwrap_err(), "help");
    }

    #[test]
    fn operators_a_secret_flag_wins_over_its_variable() {
        let from = |args: &[&str], code: Option<&str>, token: Option<&str>| {
            let mut config = parse(args, None)?;
            config.secrets_from_environment(code, token)?;
            Ok::<_, String>(config)
        };
        let open = from(&[], None, None).unwrap();
        assert!(open.room_code.is_none() && open.operator_token.is_none());
        let c = from(&[], Some("from-env"), Some("op-env")).unwrap();
        assert!(c.room_code.unwrap().matches("from-env"));
        assert!(c.operator_token.unwrap().matches("op-env"));
        let c = from(
            &["--room-code", "flag", "--operator-token=tok=en"],
            Some("env"),
            Some("bad token in env, ignored"),
        )
        .unwrap();
        assert!(c.room_code.unwrap().matches("flag"));
        assert!(c.operator_token.unwrap().matches("tok=en"));
    }

    #[test]
    fn operators_a_bad_secret_is_one_line_that_never_shows_it() {
        for (args, code, token) in [
            (&["--room-code", "has space"][..], None, None),
            (&["--operator-token", ""], None, None),
            (&["--room-code"], None, None),
            (&[], Some("caf\u{e9}"), None),
            (&[], None, Some("tab\tthere")),
            (&["--room-code", "same-secret"], None, Some("same-secret")),
        ] {
            let err = parse(args, None)
                .and_then(|mut c| c.secrets_from_environment(code, token))
                .unwrap_err();
            assert!(!err.contains('\n') && !err.is_empty(), "{err}");
            for secret in args.iter().skip(1).chain(&code).chain(&token) {
                assert!(secret.is_empty() || !err.contains(secret), "{err}");
            }
        }
    }

    #[test]
    fn operators_proxy_trust_proxy_is_repeatable_and_checked() {
        let c = parse(
            &["--trust-proxy", "127.0.0.1", "--trust-proxy=10.0.0.0/8"],
            None,
        )
        .unwrap();
        let blocks: Vec<String> = c.trust_proxy.iter().map(|b| b.to_string()).collect();
        assert_eq!(blocks, ["127.0.0.1/32", "10.0.0.0/8"]);
        for bad in ["nginx", "10.0.0.0/40", ""] {
            let err = parse(&["--trust-proxy", bad], None).unwrap_err();
            assert!(
                err.starts_with("--trust-proxy") && !err.contains('\n'),
                "{err}"
            );
        }
    }
}
