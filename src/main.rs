//! `cyberchat`: runs the server until Ctrl-C or SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::mpsc;

use cyberchat::config::USAGE;
use cyberchat::server::LISTENING_LOG_TARGET;
use cyberchat::{Command, Config, Server};
use log::{error, info};
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, SharedLogger, TermLogger, TerminalMode,
};

fn main() -> ExitCode {
    let port_env = std::env::var("PORT").ok();
    let log_env = std::env::var("CYBERCHAT_LOG").ok();
    let room_code_env = std::env::var("CYBERCHAT_ROOM_CODE").ok();
    let token_env = std::env::var("CYBERCHAT_OPERATOR_TOKEN").ok();
    let parsed = Config::parse(
        std::env::args().skip(1),
        port_env.as_deref(),
        log_env.as_deref(),
    );
    let config = match parsed.and_then(|command| match command {
        Command::Run(mut config) => config
            .secrets_from_environment(room_code_env.as_deref(), token_env.as_deref())
            .map(|()| Command::Run(config)),
        help => Ok(help),
    }) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("cyberchat: {message}");
            return ExitCode::from(2);
        }
    };
    let plain = || {
        let mut builder = ConfigBuilder::new();
        builder
            .set_thread_level(log::LevelFilter::Off)
            .set_target_level(log::LevelFilter::Off);
        builder
    };
    let log_config = plain()
        // tungstenite's own lines ("Replying to close", "Sending pong") describe writes the
        // reader discards (the outbox does all writing), so they would only mislead; every
        // connection's end is logged by the server itself, with its reason.
        .add_filter_ignore_str("tungstenite")
        .add_filter_ignore_str(LISTENING_LOG_TARGET)
        .build();
    // The address line is logged whatever the level (see LISTENING_LOG_TARGET).
    let address_config = plain().add_filter_allow_str(LISTENING_LOG_TARGET).build();
    // Logs go to stderr, coloured only on a terminal so that log files stay plain text.
    let color = if std::io::stderr().is_terminal() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let loggers: Vec<Box<dyn SharedLogger>> = vec![
        TermLogger::new(config.log_level, log_config, TerminalMode::Stderr, color),
        TermLogger::new(
            log::LevelFilter::Info,
            address_config,
            TerminalMode::Stderr,
            color,
        ),
    ];
    // A failure here only means a logger was already set.
    let _ = CombinedLogger::init(loggers);

    let (stop_tx, stop_rx) = mpsc::channel();
    if let Err(err) = ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    }) {
        error!("cannot catch Ctrl-C/SIGTERM: {err}");
        return ExitCode::FAILURE;
    }
    let server = match Server::bind(config) {
        Ok(server) => server,
        // A port someone else holds is the machine's state (1); anything else that stops the
        // start (a host that is not an address here, a --data-dir that is not a directory) is
        // a bad value (2), and nothing is listening.
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            error!("cannot start: {err}");
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!("cyberchat: cannot start: {err}");
            return ExitCode::from(2);
        }
    };
    let addr = server.local_addr();
    // The page from disk connects to port 1337 unless told otherwise: say how, when it must be.
    if addr.port() == 1337 {
        info!("open www/client.html in a browser, or http://{addr}/ (Ctrl-C stops)");
    } else {
        info!(
            "open www/client.html?server=ws://{addr}/ in a browser, or http://{addr}/ (Ctrl-C stops)"
        );
    }
    let _ = stop_rx.recv();
    server.shutdown();
    ExitCode::SUCCESS
}
