//! Unit tests of the history store and of reading a channel file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::UNIX_EPOCH;

use super::file::*;
use super::store::*;
use super::*;
use crate::protocol::{ServerFrame, UserRef};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cyberchat-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// A message frame as the hub writes it.
fn line(id: u64, channel: &str, text: &str) -> String {
    let frame = ServerFrame::Message {
        id,
        channel,
        user: UserRef {
            id: "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
            username: "Old",
            operator: false,
        },
        text,
        ts: 1_700_000_000_000,
    };
    serde_json::to_string(&frame).unwrap()
}

fn ids(lines: &[String]) -> Vec<u64> {
    let id = |l: &String| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64();
    lines.iter().map(|l| id(l).unwrap()).collect()
}

#[test]
fn step5_disk_the_longest_message_fits_the_line_bound_exactly() {
    let username = "\u{1}".repeat(MAX_USERNAME_CHARS);
    let text = "\u{1}".repeat(MAX_TEXT_CHARS);
    let frame = ServerFrame::Message {
        id: MAX_MESSAGE_ID,
        channel: &"c".repeat(MAX_CHANNEL_CHARS),
        user: UserRef {
            id: "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
            username: &username,
            operator: true,
        },
        text: &text,
        ts: u64::MAX,
    };
    // When the frame gains a field, this fails: MAX_LINE_BYTES must grow with it, or every
    // history on disk would be set aside as too long.
    let json = serde_json::to_string(&frame).unwrap();
    assert_eq!(json.len(), MAX_LINE_BYTES);
    let c = "c".repeat(MAX_CHANNEL_CHARS);
    assert_eq!(check_line(json.as_bytes(), &c), Ok(MAX_MESSAGE_ID));
}

#[test]
fn step5_disk_appended_lines_come_back_with_the_last_id() {
    let dir = temp_dir("append");
    let mut store = Store::open(&dir, Fsync::Never).unwrap();
    for id in 1..=150 {
        store
            .append("general", id, &line(id, "general", "hi"))
            .unwrap();
    }
    store.append("rust", 151, &line(151, "rust", "hi")).unwrap();
    let mut store = Store::open(&dir, Fsync::Always).unwrap();
    assert_eq!(store.last_id(), 151);
    let loaded = store.take_loaded();
    let general = &loaded["general"];
    assert_eq!(general.len(), HISTORY_LEN);
    assert_eq!(ids(general)[0], 51);
    assert_eq!(loaded["rust"], [line(151, "rust", "hi")]);
    assert!(store.take_loaded().is_empty(), "handed over, not kept");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn step5_disk_a_torn_last_line_is_cut_off_and_appends_stay_whole() {
    let dir = temp_dir("torn");
    fs::create_dir_all(&dir).unwrap();
    let (one, two, three) = (
        line(1, "general", "1"),
        line(2, "general", "2"),
        line(3, "general", "3"),
    );
    fs::write(
        dir.join("general.jsonl"),
        format!("{one}\n{two}\n{}", &three[..30]),
    )
    .unwrap();
    let mut store = Store::open(&dir, Fsync::Never).unwrap();
    assert_eq!(store.take_loaded()["general"], [one.clone(), two.clone()]);
    assert_eq!(store.last_id(), 2);
    store.append("general", 3, &three).unwrap();
    let text = fs::read_to_string(dir.join("general.jsonl")).unwrap();
    assert_eq!(text, format!("{one}\n{two}\n{three}\n"));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn step5_disk_long_lines_spanning_blocks_load_whole() {
    let dir = temp_dir("long");
    let mut store = Store::open(&dir, Fsync::Never).unwrap();
    let text = "\u{1}".repeat(MAX_TEXT_CHARS); // the longest line there is
    for id in 1..=300 {
        store.append("big", id, &line(id, "big", &text)).unwrap();
    }
    let mut store = Store::open(&dir, Fsync::Never).unwrap();
    let big = &store.take_loaded()["big"];
    assert_eq!(big.len(), HISTORY_LEN);
    assert_eq!(ids(big)[0], 201);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn step5_disk_foreign_files_are_ignored() {
    let dir = temp_dir("foreign");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("notes.txt"), "hello").unwrap();
    fs::write(dir.join("Bad Name.jsonl"), line(9, "bad", "x") + "\n").unwrap();
    let mut store = Store::open(&dir, Fsync::Never).unwrap();
    assert!(store.take_loaded().is_empty());
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "nothing moved");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn step5_disk_a_file_that_changed_while_read_is_not_cut() {
    let dir = temp_dir("grows");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("general.jsonl");
    let torn = format!("{}\n{{\"type\":\"mes", line(1, "general", "a"));
    fs::write(&path, &torn).unwrap();
    let file = File::open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    // Another writer adds to it between the read and the cut.
    let mut other = OpenOptions::new().append(true).open(&path).unwrap();
    other.write_all(b"sage\"}\n").unwrap();
    let err = mend_end(&path, &file, len, End::Cut(12)).unwrap_err();
    assert!(err.to_string().contains("changed"), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap(), torn + "sage\"}\n");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn step5_disk_ids_past_two_to_the_53_are_refused() {
    let dir = temp_dir("ids");
    let mut store = Store::open(&dir, Fsync::Never).unwrap();
    let last = line(MAX_MESSAGE_ID, "general", "last");
    store.append("general", MAX_MESSAGE_ID, &last).unwrap();
    let err = store
        .append("general", MAX_MESSAGE_ID + 1, "{}")
        .unwrap_err();
    assert!(err.to_string().contains("used up"), "{err}");
    let store = Store::open(&dir, Fsync::Never).unwrap();
    assert_eq!(store.last_id(), MAX_MESSAGE_ID);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn step5_disk_at_most_a_few_files_stay_open() {
    let dir = temp_dir("appenders");
    let mut store = Store::open(&dir, Fsync::Never).unwrap();
    for id in 1..=200 {
        let channel = format!("c{}", id % 50);
        store
            .append(&channel, id, &line(id, &channel, "x"))
            .unwrap();
        assert!(store.appenders.open.len() <= MAX_OPEN_APPENDERS);
    }
    // The busiest stays open.
    for id in 201..=300 {
        store.append("busy", id, &line(id, "busy", "x")).unwrap();
        let channel = format!("c{}", id % 50);
        store
            .append(&channel, id + 1000, &line(id + 1000, &channel, "x"))
            .unwrap();
        assert!(store.appenders.open.iter().any(|a| a.channel == "busy"));
    }
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn step5_disk_at_most_64_histories_are_loaded_at_start_general_always() {
    let dir = temp_dir("many");
    fs::create_dir_all(&dir).unwrap();
    let mut id = 0;
    for name in ["general"].into_iter().chain((0..100).map(|_| "")) {
        id += 1;
        let channel = if name.is_empty() {
            format!("c{id:03}")
        } else {
            name.to_owned()
        };
        let path = dir.join(format!("{channel}.jsonl"));
        fs::write(&path, line(id, &channel, "x") + "\n").unwrap();
        let written = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + id);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(written)
            .unwrap();
    }
    let mut store = Store::open(&dir, Fsync::Never).unwrap();
    assert_eq!(
        store.last_id(),
        101,
        "ids seen in every file, loaded or not"
    );
    let loaded = store.take_loaded();
    assert_eq!(loaded.len(), MAX_LOADED_AT_START);
    assert!(
        loaded.contains_key("general"),
        "general, though written first"
    );
    assert!(loaded.contains_key("c101") && !loaded.contains_key("c002"));
    // The others come on demand.
    assert_eq!(ids(&store.reload("c002")), [2]);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn step5_histories_together_stay_within_their_budget_the_largest_trimmed_first() {
    let mut histories = Histories::new(None);
    let raw = |id: u64, text: &str| RawValue::from_string(line(id, "c", text)).unwrap();
    let big = "x".repeat(1000);
    // A busy channel of long messages, and a quiet one of short ones.
    let mut id = 0;
    for _ in 0..50 {
        id += 1;
        histories.record("busy", id, raw(id, &big)).unwrap();
        id += 1;
        histories.record("quiet", id, raw(id, "hi")).unwrap();
    }
    let before = histories.bytes();
    histories.set_budget(before / 2);
    assert!(histories.bytes() <= before / 2);
    histories.check().unwrap();
    assert_eq!(
        histories.of("quiet").count(),
        50,
        "the small history is untouched"
    );
    let busy: Vec<u64> = histories
        .of("busy")
        .filter_map(|m| serde_json::from_str::<serde_json::Value>(m.get()).ok()?["id"].as_u64())
        .collect();
    assert!(
        busy.len() < 50 && busy.last() == Some(&99),
        "the oldest went first: {busy:?}"
    );
    // New messages go on being kept, within the budget.
    id += 1;
    histories.record("busy", id, raw(id, &big)).unwrap();
    assert!(histories.bytes() <= before / 2);
    assert_eq!(
        histories
            .of("busy")
            .last()
            .map(|m| m.get().contains(&format!("\"id\":{id}"))),
        Some(true)
    );
}
