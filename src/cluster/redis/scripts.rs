//! The Lua scripts (see [`crate::cluster`] for the design). Each runs atomically in Redis, so
//! a change to the shared state and the stream entry that tells it can never be seen apart.
//!
//! Every script but `HELLO` and `SNAPSHOT` takes `prefix, server, epoch` first and does nothing
//! but answer `{'EPOCH'}` when Redis's epoch is not the one the server joined: Redis lost its
//! data, and the server must join again before anything is written. Scripts that write this
//! server's users answer `{'REAPED'}` when the server is no longer in `<p>:servers`: another
//! server took it for dead, and its users must be registered again. Numbers go out through
//! `string.format('%d')`: Lua's own conversion writes large ones as `1e+14`.
//!
//! Two streams: `<p>:msgs` holds the chat messages, each with the id of the message before it
//! (`p`), so that a reader can tell when it missed some; `<p>:events` holds everything else,
//! each entry numbered by `<p>:evn` (`n`), for the same reason. The lengths they keep are
//! [`MESSAGES_KEPT`](crate::cluster::MESSAGES_KEPT) and
//! [`EVENTS_KEPT`](crate::cluster::EVENTS_KEPT) (written into the scripts; a test checks).

use redis::Script;

/// What every script begins with: the key helper, the epoch check, and `announce`, which
/// appends an entry to `<p>:events`, numbered.
macro_rules! prologue {
    () => {
        r"
local p, me = ARGV[1], ARGV[2]
local function key(...) return table.concat({p, ...}, ':') end
if redis.call('GET', key('epoch')) ~= ARGV[3] then return {'EPOCH'} end
local function announce(...)
  local n = string.format('%d', redis.call('INCR', key('evn')))
  redis.call('XADD', key('events'), 'MAXLEN', '~', '10000', '*', 'n', n, ...)
end
"
    };
}

/// Writing this server's users needs it to be registered.
macro_rules! registered {
    () => {
        r"
if redis.call('SISMEMBER', key('servers'), me) == 0 then return {'REAPED'} end
"
    };
}

/// Removes server `s`'s users and names and says so (`gone`); used for the dead and for
/// oneself on shutdown. Its fence (see `HELLO`) is kept an hour: a server taken for dead
/// while cut off may come back and ask which of its messages ran.
macro_rules! remove_server {
    () => {
        r"
local function remove_server(s)
  local users = redis.call('HGETALL', key('users', s))
  for i = 1, #users, 2 do
    local k = cjson.decode(users[i + 1]).key
    if redis.call('HGET', key('names'), k) == s .. ' ' .. users[i] then
      redis.call('HDEL', key('names'), k)
    end
  end
  redis.call('DEL', key('users', s), key('alive', s))
  redis.call('PEXPIRE', key('fence', s), 3600000)
  redis.call('SREM', key('servers'), s)
  announce('k', 'gone', 's', s)
end
"
    };
}

/// Notes that a server is alive now (`<p>:beat`, Redis's clock). When nobody did for half
/// `ttl` (Redis itself hung, or every server was cut off from it), nobody is taken for dead for
/// one `ttl` (`<p>:grace`): every server gets the time to beat again.
macro_rules! beat {
    () => {
        r"
local function beat(ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local last = tonumber(redis.call('GET', key('beat')) or '0')
  redis.call('SET', key('beat'), string.format('%d', now))
  if last > 0 and now - last > ttl / 2 then
    redis.call('SET', key('grace'), '1', 'PX', string.format('%d', ttl))
  end
end
"
    };
}

/// Raises the id counter to at least `floor`: ids keep increasing when Redis comes back empty.
macro_rules! raise_floor {
    () => {
        r"
local function raise_floor(floor)
  local id = tonumber(redis.call('GET', key('id')) or '0')
  if id < floor then redis.call('SET', key('id'), string.format('%d', floor)) end
end
"
    };
}

/// Joining (or joining again): `prefix, server, new epoch, ttl ms, floor, new fence, then
/// old fences` → `{epoch, then for each old fence the last message sent under it that ran, or
/// -1 when Redis no longer knows}`, or `{'STALE'}`. The epoch is the new one only if Redis had
/// none.
///
/// The fence: each connection of the publisher has one, a number greater than the one
/// before, and every message it sends carries it and a number of its own; `PUBLISH` runs only
/// under the current fence, and notes its number. So once this script has set a new fence, no
/// message sent on an older connection can run any more (whatever is still in a socket
/// somewhere), and for those whose answer never came, the number noted says which ran. A
/// `HELLO` that Redis runs late, from a connection given up, finds a newer fence: it changes
/// nothing (`STALE`).
const HELLO: &str = concat!(
    r"
local p, me = ARGV[1], ARGV[2]
local function key(...) return table.concat({p, ...}, ':') end
local fence = key('fence', me)
if tonumber(redis.call('HGET', fence, 'gen') or '0') >= tonumber(ARGV[6]) then
  return {'STALE'}
end
local epoch = redis.call('GET', key('epoch'))
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', key('epoch'), epoch)
end
",
    raise_floor!(),
    beat!(),
    r"
raise_floor(tonumber(ARGV[5]))
redis.call('SADD', key('servers'), me)
redis.call('SET', key('alive', me), '1', 'PX', ARGV[4])
beat(tonumber(ARGV[4]))
local out, keep = {epoch}, {gen = true}
for i = 7, #ARGV do
  local f = 'ran:' .. ARGV[i]
  keep[f] = true
  table.insert(out, redis.call('HGET', fence, f) or '-1')
end
redis.call('HSET', fence, 'gen', ARGV[6], 'ran:' .. ARGV[6], '0')
redis.call('PERSIST', fence)
keep['ran:' .. ARGV[6]] = true
for _, f in ipairs(redis.call('HKEYS', fence)) do
  if not keep[f] then redis.call('HDEL', fence, f) end
end
return out
"
);

/// `…, floor, channel, tail, fence, number` → `{'OK', id}`, or `{'VOID'}` when the fence is
/// not the current one (see `HELLO`): numbers a message, keeps it in the channel's history and
/// appends it to `<p>:msgs` with the id of the message before it.
const PUBLISH: &str = concat!(
    prologue!(),
    r#"
local fence = key('fence', me)
if redis.call('HGET', fence, 'gen') ~= ARGV[7] then return {'VOID'} end
redis.call('HSET', fence, 'ran:' .. ARGV[7], ARGV[8])
local id = redis.call('INCR', key('id'))
local floor = tonumber(ARGV[4])
if id <= floor then
  id = floor + 1
  redis.call('SET', key('id'), string.format('%d', id))
end
local n = string.format('%d', id)
local before = redis.call('GET', key('last')) or '0'
redis.call('SET', key('last'), n)
local m = '{"type":"message","id":' .. n .. ',' .. ARGV[6]
redis.call('XADD', key('history', ARGV[5]), 'MAXLEN', '100', '*', 'id', n, 'm', m)
redis.call('XADD', key('msgs'), 'MAXLEN', '~', '100000', '*',
  'id', n, 'p', before, 's', me, 'c', ARGV[5], 'm', m)
return {'OK', n}
"#
);

/// `…, user id, record` → `{'OK'}`: stores and announces a user.
const UPSERT: &str = concat!(
    prologue!(),
    registered!(),
    r"
redis.call('HSET', key('users', me), ARGV[4], ARGV[5])
announce('k', 'up', 's', me, 'u', ARGV[5])
return {'OK'}
"
);

/// `…, user id, then (key, record) pairs` → `{'OK', index}` or `{'TAKEN'}`: the first
/// candidate name that is free is claimed, and the user stored and announced with it.
const CLAIM: &str = concat!(
    prologue!(),
    registered!(),
    r"
local owner = me .. ' ' .. ARGV[4]
for i = 5, #ARGV, 2 do
  local held = redis.call('HGET', key('names'), ARGV[i])
  if not held or held == owner then
    redis.call('HSET', key('names'), ARGV[i], owner)
    redis.call('HSET', key('users', me), ARGV[4], ARGV[i + 1])
    announce('k', 'up', 's', me, 'u', ARGV[i + 1])
    return {'OK', string.format('%d', (i - 5) / 2)}
  end
end
return {'TAKEN'}
"
);

/// `…, user id, new key, record` → `{'OK'}` or `{'TAKEN'}`: takes the new name, frees the
/// old one.
const RENAME: &str = concat!(
    prologue!(),
    registered!(),
    r"
local owner = me .. ' ' .. ARGV[4]
local held = redis.call('HGET', key('names'), ARGV[5])
if held and held ~= owner then return {'TAKEN'} end
local old = redis.call('HGET', key('users', me), ARGV[4])
if old then
  local k = cjson.decode(old).key
  if k ~= ARGV[5] and redis.call('HGET', key('names'), k) == owner then
    redis.call('HDEL', key('names'), k)
  end
end
redis.call('HSET', key('names'), ARGV[5], owner)
redis.call('HSET', key('users', me), ARGV[4], ARGV[6])
announce('k', 'up', 's', me, 'u', ARGV[6])
return {'OK'}
"
);

/// `…, user id, '1' if kicked else '0'` → `{'OK'}`: a user left; their name is free.
const LEAVE: &str = concat!(
    prologue!(),
    r"
local old = redis.call('HGET', key('users', me), ARGV[4])
if not old then return {'OK'} end
local k = cjson.decode(old).key
if redis.call('HGET', key('names'), k) == me .. ' ' .. ARGV[4] then
  redis.call('HDEL', key('names'), k)
end
redis.call('HDEL', key('users', me), ARGV[4])
announce('k', 'rm', 's', me, 'u', ARGV[4], 'x', ARGV[5])
return {'OK'}
"
);

/// `…, channel, user, '1' or '0'` → `{'OK'}`: typing, announced and not stored.
const TYPING: &str = concat!(
    prologue!(),
    r"
announce('k', 'typing', 's', me, 'c', ARGV[4], 'u', ARGV[5], 't', ARGV[6])
return {'OK'}
"
);

/// `sanction(hash, address, until, now)` keeps a client address in `<p>:bans` or
/// `<p>:mutes` (`hash`) until `until`, which a server reads when it takes a view: a longer ban
/// already there stays; the newest mute replaces the one before, and one already over (0: lifted)
/// is taken out. What is over by `now` is dropped; the hash expires with its last entry.
macro_rules! sanction {
    () => {
        r"
local function sanction(hash, address, ends, now)
  local h = key(hash)
  if hash == 'mutes' or ends > tonumber(redis.call('HGET', h, address) or '0') then
    if ends > now then
      redis.call('HSET', h, address, string.format('%d', ends))
    else
      redis.call('HDEL', h, address)
    end
  end
  local all, last = redis.call('HGETALL', h), 0
  for i = 1, #all, 2 do
    local e = tonumber(all[i + 1])
    if e <= now then redis.call('HDEL', h, all[i]) else last = math.max(last, e) end
  end
  if last > 0 then redis.call('PEXPIREAT', h, string.format('%d', last)) end
end
"
    };
}

/// `…, operator's id, order, address, until, hash, now` → `{'OK'}`: an operator's kick, mute
/// or ban (`order`, as the operator's request) of a user on another server, announced for that
/// server to carry out. A ban or mute (`address` not empty) is kept in `hash` first, and the
/// entry carries it (`a`, `until`) for every server to apply: whoever hears of the order can
/// find the address in Redis already.
const MODERATE: &str = concat!(
    prologue!(),
    sanction!(),
    r"
if ARGV[6] == '' then
  announce('k', 'mod', 's', me, 'b', ARGV[4], 'm', ARGV[5])
else
  sanction(ARGV[8], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[9]))
  announce('k', 'mod', 's', me, 'b', ARGV[4], 'm', ARGV[5], 'a', ARGV[6], 'until', ARGV[7])
end
return {'OK'}
"
);

/// `…, channel, user, until, address, now` → `{'OK'}`: a user was muted (until 0: unmuted),
/// their address with them (kept in `<p>:mutes`), announced.
const MUTED: &str = concat!(
    prologue!(),
    sanction!(),
    r"
sanction('mutes', ARGV[7], tonumber(ARGV[6]), tonumber(ARGV[8]))
announce('k', 'muted', 's', me, 'c', ARGV[4], 'u', ARGV[5], 'until', ARGV[6], 'a', ARGV[7])
return {'OK'}
"
);

/// `…, address, until, now` → `{'OK'}`: bans a client address until `until` in `<p>:bans`,
/// and announces it, made `now`.
const BAN: &str = concat!(
    prologue!(),
    sanction!(),
    r"
sanction('bans', ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))
announce('k', 'ban', 's', me, 'a', ARGV[4], 'until', ARGV[5], 'made', ARGV[6])
return {'OK'}
"
);

/// `…, ttl ms, floor, then per user: id, n, n (key, record) pairs` → `{'OK', indexes}`: this
/// server's users, all of them, registered again (each with the first of its names that is
/// free) and announced in one `sync`.
const REGISTER: &str = concat!(
    prologue!(),
    raise_floor!(),
    beat!(),
    r"
local old = redis.call('HGETALL', key('users', me))
for i = 1, #old, 2 do
  local k = cjson.decode(old[i + 1]).key
  if redis.call('HGET', key('names'), k) == me .. ' ' .. old[i] then
    redis.call('HDEL', key('names'), k)
  end
end
redis.call('DEL', key('users', me))
redis.call('SADD', key('servers'), me)
redis.call('SET', key('alive', me), '1', 'PX', ARGV[4])
beat(tonumber(ARGV[4]))
raise_floor(tonumber(ARGV[5]))
local chosen, records = {}, {}
local i = 6
while i <= #ARGV do
  local uid, n = ARGV[i], tonumber(ARGV[i + 1])
  local owner = me .. ' ' .. uid
  local won = -1
  for j = 0, n - 1 do
    local k, record = ARGV[i + 2 + 2 * j], ARGV[i + 3 + 2 * j]
    local held = redis.call('HGET', key('names'), k)
    if not held or held == owner then
      redis.call('HSET', key('names'), k, owner)
      redis.call('HSET', key('users', me), uid, record)
      table.insert(records, record)
      won = j
      break
    end
  end
  table.insert(chosen, string.format('%d', won))
  i = i + 2 + 2 * n
end
announce('k', 'sync', 's', me, 'u', '[' .. table.concat(records, ',') .. ']')
return {'OK', chosen}
"
);

/// `…, ttl ms` → `{'OK', reaped}`: refreshes this server's heartbeat and removes every server
/// whose heartbeat has expired, unless in grace (see `beat`).
const HEARTBEAT: &str = concat!(
    prologue!(),
    registered!(),
    remove_server!(),
    beat!(),
    r"
redis.call('SET', key('alive', me), '1', 'PX', ARGV[4])
beat(tonumber(ARGV[4]))
if redis.call('EXISTS', key('grace')) == 1 then return {'OK', '0'} end
local reaped = 0
for _, s in ipairs(redis.call('SMEMBERS', key('servers'))) do
  if s ~= me and redis.call('EXISTS', key('alive', s)) == 0 then
    remove_server(s)
    reaped = reaped + 1
  end
end
return {'OK', string.format('%d', reaped)}
"
);

/// `…` → `{'OK'}`: this server stops; its users are gone at once.
const BYE: &str = concat!(
    prologue!(),
    remove_server!(),
    r"
remove_server(me)
redis.call('DEL', key('fence', me))
return {'OK'}
"
);

/// `prefix` → `{epoch or '', position in msgs, position in events, the last message id, the
/// last events number, then (server, record) pairs}`: every live server's users and the
/// streams' positions they are current at, read at once.
const SNAPSHOT: &str = r"
local p = ARGV[1]
local function key(...) return table.concat({p, ...}, ':') end
local function top(stream)
  local newest = redis.call('XREVRANGE', key(stream), '+', '-', 'COUNT', 1)
  if #newest > 0 then return newest[1][1] end
  return '0-0'
end
local out = {redis.call('GET', key('epoch')) or '', top('msgs'), top('events'),
  redis.call('GET', key('last')) or '0', redis.call('GET', key('evn')) or '0'}
for _, s in ipairs(redis.call('SMEMBERS', key('servers'))) do
  if redis.call('EXISTS', key('alive', s)) == 1 then
    for _, record in ipairs(redis.call('HVALS', key('users', s))) do
      table.insert(out, s)
      table.insert(out, record)
    end
  end
end
return out
";

/// `prefix, position in msgs` → `{epoch or '', the last message id, 1 if msgs has an entry
/// after the position else 0}`, read at once: when messages were published after the last
/// one read and none is left to read, they were trimmed unread.
const CHECK: &str = r"
local p = ARGV[1]
local function key(...) return table.concat({p, ...}, ':') end
local next = redis.call('XRANGE', key('msgs'), '(' .. ARGV[2], '+', 'COUNT', 1)
return {redis.call('GET', key('epoch')) or '', redis.call('GET', key('last')) or '0',
  string.format('%d', #next)}
";

/// Every script, hashed once.
pub struct Scripts {
    pub hello: Script,
    pub publish: Script,
    pub upsert: Script,
    pub claim: Script,
    pub rename: Script,
    pub leave: Script,
    pub typing: Script,
    pub moderate: Script,
    pub muted: Script,
    pub ban: Script,
    pub register: Script,
    pub heartbeat: Script,
    pub bye: Script,
    pub snapshot: Script,
    pub check: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            hello: Script::new(HELLO),
            publish: Script::new(PUBLISH),
            upsert: Script::new(UPSERT),
            claim: Script::new(CLAIM),
            rename: Script::new(RENAME),
            leave: Script::new(LEAVE),
            typing: Script::new(TYPING),
            moderate: Script::new(MODERATE),
            muted: Script::new(MUTED),
            ban: Script::new(BAN),
            register: Script::new(REGISTER),
            heartbeat: Script::new(HEARTBEAT),
            bye: Script::new(BYE),
            snapshot: Script::new(SNAPSHOT),
            check: Script::new(CHECK),
        }
    }

    /// Adds to `pipe` the loading of every script the publisher and the heartbeat run (on
    /// every connection, for `EVALSHA`): one round trip for all.
    pub fn load_all(pipe: &mut redis::Pipeline) {
        let all = [
            HELLO, PUBLISH, UPSERT, CLAIM, RENAME, LEAVE, TYPING, MODERATE, MUTED, BAN, REGISTER,
            HEARTBEAT, BYE,
        ];
        for code in all {
            pipe.cmd("SCRIPT").arg("LOAD").arg(code).ignore();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{EVENTS_KEPT, MESSAGES_KEPT};

    #[test]
    fn the_scripts_keep_what_the_constants_say() {
        assert!(PUBLISH.contains(&format!("'MAXLEN', '~', '{MESSAGES_KEPT}'")));
        let events = format!("'MAXLEN', '~', '{EVENTS_KEPT}'");
        for script in [
            UPSERT, CLAIM, RENAME, LEAVE, TYPING, MODERATE, MUTED, BAN, REGISTER, HEARTBEAT, BYE,
        ] {
            assert!(script.contains(&events));
        }
    }
}
