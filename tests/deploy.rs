//! The operator's files of `deploy/`, run for real: nginx and Caddy in front of the server (the
//! browser page over https and wss, with a room code and operators too, a class arriving at
//! once, a ban that refuses one client address behind the proxy, `/metrics` kept from the
//! public, the client's address passed on, quiet sockets kept open), Prometheus scraping the
//! server through its configuration, and the systemd unit, checked as far as a machine without
//! a running systemd allows.
//!
//! Every program is started by the test itself, on free ports, from the file in `deploy/` with
//! only the lines its header names rewritten (`tests/common/deploy.rs`). The server is the
//! binary, started with the unit's own flags, and where a test needs the room code and the
//! operator token, with the environment the unit reads (`deploy/cyberchat.env.example`, the
//! test's own secrets in it). Where a program is missing the test says SKIPPED and passes,
//! except under `CI=true` (`.ci/run` installs them all).

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::caddy::Caddy;
use common::class::{self, Arrival};
use common::deploy::{self, Rewrite};
use common::nginx::Nginx;
use common::outside;
use common::process::ServerProcess;
use common::prometheus::{Prometheus, promtool_check_metrics};
use common::temp::TempDir;
use common::tls::{Certificate, TlsClient, wss_over};
use common::{
    Client, DEADLINE, eventually, handshake, raw_http, status_and_body, tcp_from, upgrade_request,
};
use cyberchat::capacity::budget::{ARRIVALS_BURST, ARRIVALS_PER_SECOND};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// A class, as a teacher brings one.
const CLASS: usize = 400;
/// What a client claims to be in `X-Forwarded-For` (a documentation address).
const SPOOFED: &str = "203.0.113.9";
/// One class arrives at a time: the tests run in parallel, and two classes at once are 800
/// sockets through nginx and 800 threads of the test's, more than a busy machine answers
/// within the deadline.
static ONE_CLASS_AT_A_TIME: Mutex<()> = Mutex::new(());
/// The test's room code and operator token, in the environment the unit reads. With `+`, `&`,
/// `%` and `#`, which an invite link's fragment must carry percent-encoded.
const CODE: &str = "9f3a+c07&x";
const TOKEN: &str = "op-2b7e%41#d9f0c4a1";
/// The unit's environment file's variables, with the test's secrets.
const SECRETS: [(&str, &str); 2] = [
    ("CYBERCHAT_ROOM_CODE", CODE),
    ("CYBERCHAT_OPERATOR_TOKEN", TOKEN),
];

// ---------------------------------------------------------------------------------------------
// nginx

/// nginx from `deploy/nginx.conf` in front of the server as the unit starts it.
struct BehindNginx {
    nginx: Nginx,
    cert: Certificate,
    server: ServerProcess,
    _data: TempDir,
}

/// How a test's server differs from the unit's, beyond the test machine's port and
/// directories: flags added after the unit's, flags of the unit left out, and the variables of
/// the unit's environment file that it is given (none: no room code, no operator token).
#[derive(Default)]
struct Flags<'a> {
    add: &'a [&'a str],
    leave_out: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
}

impl Flags<'static> {
    /// The unit's own flags, with its environment file holding the test's secrets: a room
    /// code and an operator token.
    fn with_secrets() -> Self {
        Flags {
            env: &SECRETS,
            ..Flags::default()
        }
    }
}

/// nginx in front of the unit's server (changed by `flags`), with `rewrites` of nginx's file
/// beyond the usual; `None` where nginx or openssl is missing.
fn behind_nginx(test: &str, flags: Flags, rewrites: Vec<Rewrite>) -> Option<BehindNginx> {
    let mut nginx = Nginx::new(test)?;
    let cert = Certificate::make(test)?;
    let data = TempDir::new("data");
    let server = unit_server(&nginx.origin(), &data, flags);
    nginx.run_with(server.addr, &cert, rewrites);
    Some(BehindNginx {
        nginx,
        cert,
        server,
        _data: data,
    })
}

#[test]
fn nginx_the_page_over_https_chats_over_wss_in_chromium() {
    let test = "nginx_the_page_over_https_chats_over_wss_in_chromium";
    let Some(behind) = behind_nginx(test, Flags::default(), Vec::new()) else {
        return;
    };
    let page = format!("{}/client.html", behind.nginx.origin());
    common::chromium::run(test, "proxied.mjs", &[("CYBERCHAT_PAGE", page)]);
}

#[test]
fn nginx_sends_http_to_https_and_keeps_metrics_from_outsiders() {
    let test = "nginx_sends_http_to_https_and_keeps_metrics_from_outsiders";
    let Some(behind) = behind_nginx(test, Flags::default(), Vec::new()) else {
        return;
    };
    let (nginx, cert, server) = (&behind.nginx, &behind.cert, &behind.server);
    // A request naming another host is still sent to the chat's own name.
    let answer = raw_http(
        nginx.http,
        b"GET /client.html?x=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_and_body(&answer).0, 301, "{answer}");
    assert_eq!(
        header(&answer, "Location").as_deref(),
        Some("https://chat.example.org/client.html?x=1")
    );

    let client = cert.client();
    let page = client
        .get_from(class::address(0), nginx.https, "/client.html")
        .unwrap();
    assert_eq!(
        status_and_body(&page),
        status_and_body(&direct(server.addr, "/client.html")),
        "the page, as the server serves it"
    );
    metrics_are_kept_from_outsiders(&client, nginx.https, server.addr);
}

#[test]
fn nginx_passes_the_upgrade_and_puts_the_real_client_address_last() {
    let test = "nginx_passes_the_upgrade_and_puts_the_real_client_address_last";
    let Some(mut nginx) = Nginx::new(test) else {
        return;
    };
    let Some(cert) = Certificate::make(test) else {
        return;
    };
    let upstream = Recorder::answering(None);
    nginx.run(upstream.addr, &cert);
    let head = upstream.head_of_upgrade(&cert.client(), nginx.https);
    // The client's own claim is kept, its real address appended: the server, told to trust
    // nginx, reads the last entry only.
    assert_eq!(
        header(&head, "X-Forwarded-For"),
        Some(format!("{SPOOFED}, {}", class::address(6))),
        "{head}"
    );
}

/// Without `--trust-proxy` (left out of the unit's flags, should they hold it), every
/// connection through nginx comes from nginx's address, so a class arriving at once is one
/// address to the server, and its per-address arrival limit (a burst, then so many a second)
/// refuses the rest. Straight to the server, each person from an address of their own, all
/// get in.
#[test]
fn nginx_a_class_of_400_without_trust_proxy_meets_the_limit_of_one_address() {
    let _turn = ONE_CLASS_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let test = "nginx_a_class_of_400_without_trust_proxy_meets_the_limit_of_one_address";
    let untrusting = Flags {
        leave_out: &["--trust-proxy"],
        ..Flags::default()
    };
    let Some(behind) = behind_nginx(test, untrusting, Vec::new()) else {
        return;
    };
    let (nginx, cert, server) = (&behind.nginx, &behind.cert, &behind.server);
    let direct = class::arrive(
        CLASS,
        |from| tcp_from(from, server.addr),
        |stream, i| handshake(stream, server.addr, &format!("/?username=d{i}"), &[]).map(|c| c.ws),
    );
    report("directly", &direct);
    assert_eq!(direct.admitted, CLASS, "{direct:?}");

    let through = class_through(&cert.client(), nginx.https);
    report("through nginx without --trust-proxy", &through);
    let took = through.took.as_secs_f64();
    assert_eq!(through.admitted + through.refused_count(), CLASS);
    let statuses: Vec<u16> = through.refused.keys().copied().collect();
    assert_eq!(
        statuses,
        [503],
        "each refusal is the server's 503: {through:?}"
    );
    for body in &through.refused[&503] {
        assert!(
            body.contains("from your address"),
            "a per-address limit: {body:?}"
        );
    }
    let most = ARRIVALS_BURST + ARRIVALS_PER_SECOND * took;
    assert!(
        through.admitted as f64 <= most.ceil(),
        "{} admitted: one address may arrive {most:.0} times in {took:.2} s",
        through.admitted
    );
}

/// With `--trust-proxy 127.0.0.1`, as the unit has it, the server takes each connection's
/// client address from the entry nginx appends to `X-Forwarded-For`: a class arriving at once
/// through nginx is as many addresses as people, as it is straight to the server, and every
/// one gets in. The time it took is printed (`-- --nocapture`).
#[test]
fn nginx_a_class_of_400_with_the_units_trust_proxy_all_get_in() {
    let _turn = ONE_CLASS_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let test = "nginx_a_class_of_400_with_the_units_trust_proxy_all_get_in";
    let unit = deploy::unit_flags(&[]);
    assert!(
        unit.windows(2)
            .any(|w| w[0] == "--trust-proxy" && w[1] == "127.0.0.1"),
        "the unit trusts the proxy on its own machine: {unit:?}"
    );
    let Some(behind) = behind_nginx(test, Flags::default(), Vec::new()) else {
        return;
    };
    let through = class_through(&behind.cert.client(), behind.nginx.https);
    report("through nginx with --trust-proxy 127.0.0.1", &through);
    assert_eq!(through.admitted, CLASS, "{through:?}");
    // Each one known by their own address, not by nginx's.
    let server = &behind.server;
    eventually("the server names each person by their own address", || {
        let log = server.log.lock().unwrap();
        let named: HashSet<&str> = log
            .iter()
            .filter_map(|line| line.split_once(" connected from ")?.1.split_once(" (conn"))
            .map(|(address, _)| address)
            .collect();
        (0..CLASS).all(|i| named.contains(class::address(i).to_string().as_str()))
    });
}

/// An operator bans a person through nginx: that person's client address (which only nginx's
/// `X-Forwarded-For` tells the server) is refused with 403 through nginx, whatever address the
/// client claims, while people at other addresses stay in and newcomers from them get in.
#[test]
fn nginx_a_ban_refuses_that_client_address_and_no_other() {
    let test = "nginx_a_ban_refuses_that_client_address_and_no_other";
    let Some(behind) = behind_nginx(test, Flags::with_secrets(), Vec::new()) else {
        return;
    };
    let (nginx, server) = (&behind.nginx, &behind.server);
    let client = behind.cert.client();
    let enter = |i: usize, name: &str, operator: bool| {
        let path = format!("/?username={name}");
        let mut ws = client
            .wss_from(class::address(i), nginx.https, &path)
            .expect("the socket opens through nginx");
        assert_eq!(read_frame(&mut ws)["type"], "locked");
        let mut hello = json!({"type": "hello", "code": CODE});
        if operator {
            hello["operator"] = TOKEN.into();
        }
        ws.send(Message::text(hello.to_string())).unwrap();
        let welcome = next_of(&mut ws, "welcome");
        // Absent for all but operators.
        let marked = welcome["user"]["operator"].as_bool().unwrap_or(false);
        assert_eq!(marked, operator, "{welcome}");
        (ws, welcome["user"]["id"].as_str().unwrap().to_owned())
    };
    let (mut teacher, _) = enter(0, "Teacher", true);
    let (mut pupil, pupil_id) = enter(1, "Pupil", false);
    let (mut classmate, _) = enter(2, "Classmate", false);

    let ban = json!({"type": "ban", "user": pupil_id, "minutes": 5, "reason": "abuse"});
    teacher.send(Message::text(ban.to_string())).unwrap();
    let kicked = next_of(&mut pupil, "kicked");
    assert_eq!(kicked["reason"], "abuse");
    let in_five_minutes = cyberchat::protocol::now_ms() + 5 * 60_000;
    let until = kicked["until"].as_u64().expect("a ban says until when");
    assert!(until.abs_diff(in_five_minutes) < 60_000, "{kicked}");
    assert_eq!(close_code(&mut pupil), Some(4001));
    let left = next_of(&mut classmate, "left");
    assert_eq!(
        (&left["user"]["id"], &left["kicked"]),
        (&json!(pupil_id), &json!(true))
    );

    // Back through nginx from the banned address: refused, and told until when; a claim to be
    // another address changes nothing (nginx appends the real one, which the server reads).
    let claims: [&[(&str, &str)]; 2] = [&[], &[("X-Forwarded-For", "127.0.1.99")]];
    for claim in claims {
        let back = client.wss_from_with(class::address(1), nginx.https, "/?username=Pupil", claim);
        match back {
            Err(tungstenite::Error::Http(answer)) => {
                assert_eq!(answer.status().as_u16(), 403, "{claim:?}");
                let body = String::from_utf8_lossy(answer.body().as_deref().unwrap_or_default());
                assert!(body.contains("banned") && body.contains("until"), "{body}");
            }
            other => panic!(
                "the banned address, claiming {claim:?}, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    assert!(
        server
            .logged(&format!(
                "from {}: refused: banned until",
                class::address(1)
            ))
            .is_some(),
        "the server's log names the banned client's own address"
    );
    // Everyone else: a newcomer from another address enters, and those in stay in.
    let (_newcomer, _) = enter(3, "Newcomer", false);
    teacher
        .send(Message::text(
            json!({"type": "message", "text": "still here"}).to_string(),
        ))
        .unwrap();
    assert_eq!(next_of(&mut classmate, "message")["text"], "still here");
}

#[test]
fn nginx_the_page_in_a_locked_chat_with_operators_in_chromium() {
    let test = "nginx_the_page_in_a_locked_chat_with_operators_in_chromium";
    let Some(behind) = behind_nginx(test, Flags::with_secrets(), Vec::new()) else {
        return;
    };
    let page = format!("{}/client.html", behind.nginx.origin());
    let env = [
        ("CYBERCHAT_PAGE", page),
        ("CYBERCHAT_CODE", CODE.to_owned()),
        ("CYBERCHAT_TOKEN", TOKEN.to_owned()),
    ];
    if common::chromium::run(test, "operators.mjs", &env).is_none() {
        return;
    }
    // The invite link's secrets travelled in frames only: no request line held them.
    let access_log = behind.nginx.access_log();
    assert!(access_log.contains("GET /client.html"), "{access_log}");
    for secret in [CODE, TOKEN] {
        for spelling in [secret.to_owned(), common::percent_encode(secret)] {
            assert!(!access_log.contains(&spelling), "nginx logged {spelling}");
            let logged = behind.server.logged(&spelling);
            assert!(logged.is_none(), "the server logged {logged:?}");
        }
    }
}

/// nginx closes a socket that stays silent for `proxy_read_timeout`; the server's pings keep a
/// quiet chat socket from ever being that silent. Here the timeouts are cut to 2 s: with a
/// ping every half second the socket outlives them, and without pings (the default interval,
/// 30 s) nginx closes it.
#[test]
fn nginx_a_quiet_socket_outlives_proxy_read_timeout_while_the_server_pings() {
    let test = "nginx_a_quiet_socket_outlives_proxy_read_timeout_while_the_server_pings";
    let timeout = Duration::from_secs(2);
    for (pings, pinged) in [(&["--ping-interval", "0.5"][..], true), (&[][..], false)] {
        let seconds = timeout.as_secs();
        let rewrites = vec![
            Rewrite::to(
                "proxy_read_timeout ",
                format!("proxy_read_timeout {seconds}s;"),
            ),
            Rewrite::to(
                "proxy_send_timeout ",
                format!("proxy_send_timeout {seconds}s;"),
            ),
        ];
        let flags = Flags {
            add: pings,
            ..Flags::default()
        };
        let Some(behind) = behind_nginx(test, flags, rewrites) else {
            return;
        };
        let mut ws = behind
            .cert
            .client()
            .wss_from(class::address(3), behind.nginx.https, "/?username=Quiet")
            .expect("the socket opens");
        assert_eq!(read_frame(&mut ws)["type"], "welcome");
        // Quiet for twice the timeout, answering pings only (tungstenite answers each on the
        // next read).
        let quiet_until = Instant::now() + timeout * 2;
        let mut ended = None;
        while ended.is_none() && Instant::now() < quiet_until {
            match ws.read() {
                Ok(Message::Ping(_)) => {}
                Ok(other) => ended = Some(format!("{other:?}")),
                Err(err) => ended = Some(err.to_string()),
            }
        }
        if pinged {
            assert_eq!(ended, None, "with pings every 0.5 s the socket stays open");
            say(&mut ws, "still here");
        } else {
            assert!(
                ended.is_some(),
                "without pings nginx closes it after {timeout:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Caddy

/// Caddy from `deploy/Caddyfile` in front of the server as the unit starts it; `None` where
/// Caddy is missing.
fn behind_caddy(test: &str) -> Option<(Caddy, ServerProcess, TempDir)> {
    let mut caddy = Caddy::new(test)?;
    let data = TempDir::new("data");
    let server = unit_server(&caddy.origin(), &data, Flags::default());
    caddy.run(server.addr);
    Some((caddy, server, data))
}

#[test]
fn caddy_the_page_over_https_chats_over_wss_in_chromium() {
    let test = "caddy_the_page_over_https_chats_over_wss_in_chromium";
    let Some((caddy, _server, _data)) = behind_caddy(test) else {
        return;
    };
    let page = format!("{}/client.html", caddy.origin());
    common::chromium::run(test, "proxied.mjs", &[("CYBERCHAT_PAGE", page)]);
}

#[test]
fn caddy_keeps_metrics_from_outsiders_and_chats_over_wss() {
    let test = "caddy_keeps_metrics_from_outsiders_and_chats_over_wss";
    let Some((caddy, server, _data)) = behind_caddy(test) else {
        return;
    };
    let client = TlsClient::trusting(&caddy.authority());
    metrics_are_kept_from_outsiders(&client, caddy.https, server.addr);
    let mut ws = client
        .wss_from(class::address(1), caddy.https, "/?username=Ann")
        .expect("the socket opens through Caddy");
    assert_eq!(read_frame(&mut ws)["type"], "welcome");
    let message = say(&mut ws, "over wss, through Caddy");
    assert_eq!(message["user"]["username"], "Ann");
}

#[test]
fn caddy_passes_the_upgrade_and_sends_the_real_client_address_alone() {
    let test = "caddy_passes_the_upgrade_and_sends_the_real_client_address_alone";
    let Some(mut caddy) = Caddy::new(test) else {
        return;
    };
    let upstream = Recorder::answering(None);
    caddy.run(upstream.addr);
    let client = TlsClient::trusting(&caddy.authority());
    let head = upstream.head_of_upgrade(&client, caddy.https);
    // Caddy believes no client's claim: the header is the client's own address alone.
    assert_eq!(
        header(&head, "X-Forwarded-For"),
        Some(class::address(6).to_string()),
        "{head}"
    );
}

// ---------------------------------------------------------------------------------------------
// Prometheus

/// The text the stand-in serves: one family, as the server's `/metrics` has it.
const STAND_IN_METRICS: &str = "# HELP cyberchat_users_online People in the chat.\n\
                                # TYPE cyberchat_users_online gauge\n\
                                cyberchat_users_online 7\n";

/// Checks the harness and `deploy/prometheus.yml`, not the server: a real Prometheus, started
/// from the file, scrapes a stand-in `/metrics` (a listener in this test serving a fixed
/// text), asking for `/metrics`, and the value comes back through Prometheus' query API. The
/// next test points it at the server's own.
#[test]
fn prometheus_from_deploy_scrapes_metrics_and_answers_queries() {
    let test = "prometheus_from_deploy_scrapes_metrics_and_answers_queries";
    let Some(checked) = promtool_check_metrics(test, STAND_IN_METRICS) else {
        return;
    };
    assert_eq!(checked, Ok(()), "the stand-in's text is clean");
    let stand_in = Recorder::answering(Some(STAND_IN_METRICS));
    let Some(prometheus) = Prometheus::start(test, stand_in.addr) else {
        return;
    };
    let within = Duration::from_secs(15);
    assert_eq!(prometheus.value("up{job=\"cyberchat\"}", within), 1.0);
    let online = "cyberchat_users_online{job=\"cyberchat\"}";
    assert_eq!(prometheus.value(online, within), 7.0);
    let heads = stand_in.heads.lock().unwrap();
    assert!(
        heads
            .iter()
            .all(|h| h.starts_with("GET /metrics HTTP/1.1\r\n")),
        "Prometheus asks for /metrics: {heads:?}"
    );
}

/// The real Prometheus, from `deploy/prometheus.yml`, scrapes the server's own `/metrics`, and
/// `cyberchat_users_online` read back through Prometheus' query API is the number of people in
/// the chat, and follows them as they leave: a connection still waiting for its room code is
/// counted among the chat door's connections, never among the people. `promtool` finds
/// nothing to say of the server's exposition, which holds neither the code nor the token.
#[test]
fn prometheus_from_deploy_reads_the_servers_own_users_online() {
    let test = "prometheus_from_deploy_reads_the_servers_own_users_online";
    let server = unit_server(
        "https://chat.example.org",
        &TempDir::new("data"),
        Flags::with_secrets(),
    );
    const PEOPLE: usize = 5;
    let mut people: Vec<Client> = (0..PEOPLE)
        .map(|i| {
            let mut person = common::connect(server.addr, &format!("/?username=p{i}"));
            assert_eq!(person.recv()["type"], "locked");
            person.send(json!({"type": "hello", "code": CODE}));
            person.recv_type("welcome");
            person
        })
        .collect();
    let mut waiting = common::connect(server.addr, "/?username=Late");
    assert_eq!(waiting.recv()["type"], "locked");

    let exposition = common::get(server.addr, "/metrics").1;
    let Some(checked) = promtool_check_metrics(test, &exposition) else {
        return;
    };
    assert_eq!(checked, Ok(()), "promtool on the server's /metrics");
    for secret in [CODE, TOKEN] {
        assert!(!exposition.contains(secret), "/metrics holds a secret");
    }
    let Some(prometheus) = Prometheus::start(test, server.addr) else {
        return;
    };
    let within = Duration::from_secs(15);
    prometheus.value_becomes("up{job=\"cyberchat\"}", 1.0, within);
    let online = "cyberchat_users_online{job=\"cyberchat\"}";
    prometheus.value_becomes(online, PEOPLE as f64, within);
    let chat_door = "cyberchat_connections{door=\"chat\",job=\"cyberchat\"}";
    prometheus.value_becomes(chat_door, (PEOPLE + 1) as f64, within);
    people.truncate(PEOPLE - 2);
    prometheus.value_becomes(online, (PEOPLE - 2) as f64, within);
    drop(waiting);
    drop(people);
    prometheus.value_becomes(online, 0.0, within);
}

// ---------------------------------------------------------------------------------------------
// systemd

#[test]
fn systemd_the_unit_passes_systemd_analyze_verify() {
    let test = "systemd_the_unit_passes_systemd_analyze_verify";
    let install = "apt-get install -y systemd";
    let Some(analyze) = outside::found(test, "systemd-analyze", "--version", install) else {
        return;
    };
    let dir = TempDir::new("unit");
    // The check wants ExecStart's program to exist: this build stands in for the installed one.
    let program = env!("CARGO_BIN_EXE_cyberchat");
    let unit = deploy::rewritten(
        "cyberchat.service",
        &[Rewrite::with("ExecStart=", |line| {
            let (installed, _) = deploy::unit_exec_start();
            line.replacen(&installed, program, 1)
        })],
    );
    let file = dir.join("cyberchat.service");
    std::fs::write(&file, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze runs");
    let said = String::from_utf8_lossy(&out.stderr);
    // Other units of the machine may draw remarks of their own; ours must draw none: each is a
    // line systemd would ignore (an unknown key, a value it cannot read), a protection lost.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("cyberchat.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn systemd_the_units_flags_are_ones_the_server_knows() {
    let (program, flags) = deploy::unit_exec_start();
    assert!(
        program.ends_with("/cyberchat"),
        "ExecStart runs the server: {program}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cyberchat"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in flags.iter().step_by(2) {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{flag} "))),
            "deploy/cyberchat.service: `cyberchat --help` lists no {flag}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Shared steps

/// The server as `deploy/cyberchat.service` starts it, but on a free port, with its history
/// in `data`, the project's page, only pages from `origin` (the proxy's) allowed, and changed
/// by `flags`.
fn unit_server(origin: &str, data: &TempDir, flags: Flags) -> ServerProcess {
    let www = Path::new(env!("CARGO_MANIFEST_DIR")).join("www");
    let (data, www) = (data.path().display().to_string(), www.display().to_string());
    let mut replace = vec![
        ("--port", None),
        ("--data-dir", Some(data.as_str())),
        ("--www", Some(www.as_str())),
        ("--allow-origin", Some(origin)),
    ];
    replace.extend(flags.leave_out.iter().map(|flag| (*flag, None)));
    let unit = deploy::unit_flags(&replace);
    let env = match flags.env {
        [] => Vec::new(),
        values => deploy::unit_environment(values),
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let flags: Vec<&str> = unit
        .iter()
        .map(String::as_str)
        .chain(flags.add.iter().copied())
        .collect();
    ServerProcess::start(&flags, &env, None)
}

/// A class of [`CLASS`] opening the chat at once through the TLS proxy at `proxy`, each from
/// an address of their own. Every one must get an answer: a welcome or an HTTP status.
fn class_through(client: &TlsClient, proxy: SocketAddr) -> Arrival {
    let arrival = class::arrive(
        CLASS,
        |from| client.connect_from(from, proxy),
        |stream, i| wss_over(stream, &format!("/?username=p{i}")),
    );
    assert!(
        arrival.failed.is_empty(),
        "every one gets an answer; {} did not, the first: {:?}",
        arrival.failed.len(),
        &arrival.failed[..arrival.failed.len().min(5)]
    );
    arrival
}

/// Prints how a class's arrival went, where `cargo test -- --nocapture` shows it.
fn report(how: &str, arrival: &Arrival) {
    println!(
        "a class of {CLASS}, {how}: {} admitted, {} refused {:?}, in {:.2} s",
        arrival.admitted,
        arrival.refused_count(),
        arrival.refused.keys().collect::<Vec<_>>(),
        arrival.took.as_secs_f64()
    );
}

/// `/metrics` through the proxy at `proxy`: from 127.0.0.1 it is the server's own answer;
/// from any other address it is refused (403), under every spelling that the server itself
/// would answer as its metrics (status 200).
fn metrics_are_kept_from_outsiders(client: &TlsClient, proxy: SocketAddr, server: SocketAddr) {
    let through = |from, path: &str| {
        let answer = client
            .get_from(from, proxy, path)
            .expect("the proxy answers");
        status_and_body(&answer).0
    };
    let status = |path: &str| status_and_body(&direct(server, path)).0;
    let local = "127.0.0.1".parse().unwrap();
    assert_eq!(
        through(local, "/metrics"),
        status("/metrics"),
        "/metrics from 127.0.0.1"
    );
    let outsider = class::address(2);
    assert_eq!(
        through(outsider, "/metrics"),
        403,
        "/metrics from {outsider}"
    );
    let spellings = [
        "/metrics/",
        "/metrics?name=x",
        "//metrics",
        "/%6detrics",
        "/%6D%65%74%72%69%63%73",
        "/./metrics",
        "/x/../metrics",
        "/metrics%3F",
        "/metrics%2F",
        "/metrics;x",
        "/metrics%00",
        "/Metrics",
    ];
    for path in spellings {
        if status(path) == 200 {
            assert_eq!(through(outsider, path), 403, "{path} from {outsider}");
        }
    }
}

/// `GET path` straight to the server: its whole answer.
fn direct(server: SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    raw_http(server, request.as_bytes())
}

/// The value of the header `name` (any case) in an HTTP head, a request's or an answer's.
fn header(head: &str, name: &str) -> Option<String> {
    let head = head.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// A listener standing in for the chat server behind a proxy, or for its `/metrics`: it
/// records each request's head and answers with a body of Prometheus' text format, or 404.
struct Recorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn answering(metrics: Option<&'static str>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&heads);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(DEADLINE));
                let mut head = Vec::new();
                let mut byte = [0u8];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                recorded.lock().unwrap().push(head);
                let answer = match metrics {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\
                             \r\n\r\n"
                        .to_owned(),
                };
                let _ = stream.write_all(answer.as_bytes());
            }
        });
        Recorder { addr, heads }
    }

    /// Sends a WebSocket upgrade claiming `X-Forwarded-For: SPOOFED` through the proxy at
    /// `proxy`, from the class's 7th address; the head the proxy sent on, which must ask for
    /// the upgrade and say the client came over https.
    fn head_of_upgrade(&self, client: &TlsClient, proxy: SocketAddr) -> String {
        let mut stream = client
            .connect_from(class::address(6), proxy)
            .expect("the proxy accepts");
        let request = upgrade_request("/", &format!("X-Forwarded-For: {SPOOFED}\r\n"));
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = [0u8; 512];
        let _ = stream.read(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 404"),
            "the recorder's answer comes back: {}",
            String::from_utf8_lossy(&answer)
        );
        let heads = self.heads.lock().unwrap();
        assert_eq!(
            heads.len(),
            1,
            "one request reached the recorder: {heads:?}"
        );
        let head = heads[0].clone();
        for (name, value) in [
            ("Upgrade", "websocket"),
            ("Connection", "upgrade"),
            ("X-Forwarded-Proto", "https"),
        ] {
            assert_eq!(
                header(&head, name).map(|v| v.to_lowercase()).as_deref(),
                Some(value),
                "the server is told {name}: {value}: {head}"
            );
        }
        head
    }
}

/// The next text frame as JSON.
fn read_frame<S: Read + Write>(ws: &mut WebSocket<S>) -> Value {
    loop {
        match ws.read().expect("a frame") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Sends a chat message and waits for it to come back; the `message` frame.
fn say<S: Read + Write>(ws: &mut WebSocket<S>, text: &str) -> Value {
    let frame = json!({"type": "message", "text": text});
    ws.send(Message::text(frame.to_string())).unwrap();
    loop {
        let frame = read_frame(ws);
        if frame["type"] == "message" && frame["text"] == text {
            return frame;
        }
    }
}

/// Skips frames until one of type `kind`.
fn next_of<S: Read + Write>(ws: &mut WebSocket<S>, kind: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no {kind} within {DEADLINE:?}");
        let frame = read_frame(ws);
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// Reads until the server's close frame: its code (`None`: the stream ended without one).
fn close_code<S: Read + Write>(ws: &mut WebSocket<S>) -> Option<u16> {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}
