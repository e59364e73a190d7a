//! The fleet's Redis epoch: how every worker finds out, in the same step as taking or renewing a
//! lock, that Redis lost data (an empty restart, a restart from an older snapshot, a failover to
//! a lagging replica, `FLUSHALL`/`FLUSHDB`), and how long no lock may be granted afterwards.
//!
//! One hash, `<prefix>:epoch`, holds the current epoch:
//! - `id`: random, made by the worker that created the epoch;
//! - `run_id`: the `run_id` of the Redis process it was written on. Every Redis process has its
//!   own, so a record that comes back from a snapshot, an AOF or a replica after a restart or a
//!   failover names another process than the one answering: that is a loss (or a restart we
//!   cannot tell from one);
//! - `created`, `allowed`: Redis's own clock (`TIME`, milliseconds) when the epoch was made and
//!   from when locks are granted in it, the same deadline for the whole fleet;
//! - `seed`: the fence base of the epoch, `created × 1024`, above every fence number an earlier
//!   epoch handed out (see [`ACQUIRE`]);
//! - `cause`: why it was made (`new`, `started`, `flushed`, `restarted`), for operators.
//!
//! The check runs inside the acquire and renew scripts, so it costs no round trip and no worker can
//! act on a stale view. When the record is missing or names another process, the script makes a
//! new epoch and decides its `allowed`:
//! - a record from another Redis process (restart, snapshot, failover) or a record missing while
//!   the caller had seen one, or missing after a flush since the server started: `now + TTL`.
//!   Every holder from before renewed last before the loss, so its lease (4/5 of the TTL after
//!   that renewal) has run out by then, and its renewal in the meantime fails;
//! - missing on a server up for less than a TTL: an empty restart cannot be told from a brand-new
//!   Redis, so `server start + TTL`;
//! - missing on a server up for longer, never flushed: a brand-new fleet, locks at once.

/// Shared by the scripts: makes sure the epoch record belongs to this Redis process, creating a
/// new epoch if not. Returns `id, allowed, seed, now` (numbers as Lua numbers).
///
/// `ekey` the epoch hash; `ttl` the lock TTL in ms; `seen` the epoch id the caller last saw (`''`
/// if none); `candidate` the id of a new epoch if one is made.
///
/// Numbers are written with `%.0f`: Lua's own conversion keeps 14 digits, a fence has 16.
pub const PRELUDE: &str = r#"
local function num(s) return tonumber(s or '') end
local function fmt(n) return string.format('%.0f', n) end
local function epoch(ekey, ttl, seen, candidate)
  local info = redis.call('INFO', 'server')
  local run_id = string.match(info, 'run_id:(%x+)') or '?'
  local uptime = num(string.match(info, 'uptime_in_seconds:(%d+)')) or 0
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local rec = redis.call('HMGET', ekey, 'id', 'run_id', 'allowed', 'seed')
  if rec[1] and rec[2] == run_id then
    return rec[1], num(rec[3]) or now, num(rec[4]) or 0, now
  end
  local allowed, cause
  if rec[1] then
    cause = 'restarted'
    allowed = now + ttl
  elseif seen ~= '' then
    cause = 'flushed'
    allowed = now + ttl
  else
    local stats = redis.call('INFO', 'commandstats')
    local flushes = (num(string.match(stats, 'cmdstat_flushall:calls=(%d+)')) or 0)
      + (num(string.match(stats, 'cmdstat_flushdb:calls=(%d+)')) or 0)
    if flushes > 0 then
      cause = 'flushed'
      allowed = now + ttl
    elseif uptime * 1000 < ttl then
      -- `uptime` is rounded down: the estimate of the start is never earlier than the real one.
      cause = 'started'
      allowed = now - uptime * 1000 + ttl
    else
      cause = 'new'
      allowed = now
    end
  end
  local seed = now * 1024
  local old = num(rec[4])
  if old and old >= seed then
    -- Redis's clock went back: stay above the restored epoch anyway.
    seed = old + 4294967296
  end
  redis.call('DEL', ekey)
  redis.call('HSET', ekey, 'id', candidate, 'run_id', run_id, 'created', fmt(now),
    'allowed', fmt(allowed), 'seed', fmt(seed), 'cause', cause)
  return candidate, allowed, seed, now
end
"#;

/// Takes a tenant's lock in the current epoch.
///
/// `KEYS[1]` epoch, `KEYS[2]` lock, `KEYS[3]` the tenant's fencing hash; `ARGV[1]` TTL (ms),
/// `ARGV[2]` epoch seen, `ARGV[3]` candidate epoch id, `ARGV[4]` lock token.
///
/// Replies `{kind, value, epoch id}`: `{'wait', ms, id}` while the epoch does not grant locks yet,
/// `{'busy', '0', id}`, `{'acquired', fence, id}`.
///
/// Fences: the fencing hash holds `epoch` and `n`. The first lock of a tenant in an epoch starts
/// from `max(n, seed) + 1`, later ones count up. The seed is the epoch's creation time in ms × 1024,
/// so fences of an earlier epoch (its own seed plus at most one per lock taken) stay below it as
/// long as a tenant takes fewer than 1024 locks a millisecond and Redis's clock does not go back by
/// more than the time between two losses. A restored `n` from before is raised past the seed, so a
/// snapshot cannot hand out a fence again.
pub const ACQUIRE: &str = r#"
local id, allowed, seed, now = epoch(KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3])
if now < allowed then
  return {'wait', fmt(allowed - now), id}
end
if not redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[1]) then
  return {'busy', '0', id}
end
local f = redis.call('HMGET', KEYS[3], 'epoch', 'n')
local n
if f[1] == id and num(f[2]) then
  n = redis.call('HINCRBY', KEYS[3], 'n', 1)
else
  n = seed
  if num(f[2]) and num(f[2]) > n then n = num(f[2]) end
  n = n + 1
  redis.call('HSET', KEYS[3], 'epoch', id, 'n', fmt(n))
end
return {'acquired', fmt(n), id}
"#;

/// Renews a lock taken in epoch `ARGV[2]`: `-1` when the epoch changed (Redis lost data since:
/// the holder must stop even if its key came back from a snapshot), `0` when the key is gone or
/// someone else's, `1` when renewed.
///
/// `KEYS[1]` epoch, `KEYS[2]` lock; `ARGV[1]` TTL (ms), `ARGV[2]` the lock's epoch, `ARGV[3]`
/// candidate epoch id, `ARGV[4]` lock token.
pub const RENEW: &str = r#"
local id = epoch(KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3])
if id ~= ARGV[2] then
  return -1
end
if redis.call('GET', KEYS[2]) == ARGV[4] then
  return redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return 0
"#;

/// Only the epoch check: `{id, ms until locks are granted (0 when they are)}`. `KEYS[1]` epoch;
/// `ARGV[1]` TTL (ms), `ARGV[2]` epoch seen, `ARGV[3]` candidate epoch id.
pub const CHECK: &str = r#"
local id, allowed, seed, now = epoch(KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3])
local wait = allowed - now
if wait < 0 then wait = 0 end
return {id, fmt(wait)}
"#;

/// What the epoch check answered to an acquire, before it is turned into a guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Wait(std::time::Duration),
    Busy,
    Acquired(u64),
}

/// Parses the `{kind, value, epoch id}` reply of [`ACQUIRE`] into the reply and the epoch id.
pub fn parse(reply: &[String]) -> Option<(Reply, String)> {
    let [kind, value, id] = reply else {
        return None;
    };
    let value: u64 = value.parse().ok()?;
    let r = match kind.as_str() {
        "wait" => Reply::Wait(std::time::Duration::from_millis(value)),
        "busy" => Reply::Busy,
        "acquired" => Reply::Acquired(value),
        _ => return None,
    };
    Some((r, id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn the_scripts_replies_are_read_whole_or_not_at_all() {
        assert_eq!(
            parse(&s(&["wait", "1500", "e1"])),
            Some((Reply::Wait(Duration::from_millis(1500)), "e1".into()))
        );
        assert_eq!(
            parse(&s(&["busy", "0", "e1"])),
            Some((Reply::Busy, "e1".into()))
        );
        assert_eq!(
            parse(&s(&["acquired", "1839000000000001", "e2"])),
            Some((Reply::Acquired(1_839_000_000_000_001), "e2".into()))
        );
        assert_eq!(parse(&s(&["acquired", "1.8e+15", "e2"])), None);
        assert_eq!(parse(&s(&["granted", "1", "e2"])), None);
        assert_eq!(parse(&s(&["busy", "0"])), None);
    }
}
