//! The Lua scripts behind every multi-key change: Redis runs each one
//! atomically, which is what makes accept durable-or-nothing and fences a
//! job's writes on its owner.

use std::sync::LazyLock;

use redis::Script;

/// Shared by the scripts that end a job: from now on it expires after the
/// result TTL; its id then reads as gone for a week more.
const ENDED: &str = r#"
local function ended(job, events, gone, ttl)
  redis.call('EXPIRE', job, ttl)
  redis.call('EXPIRE', events, ttl)
  redis.call('SET', gone, '1', 'EX', ttl + 7 * 86400)
  local idem = redis.call('HGET', job, 'idem')
  if idem and idem ~= '' then redis.call('EXPIRE', idem, ttl) end
end
local function terminal(status)
  return status == 'completed' or status == 'failed' or status == 'cancelled'
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{ENDED}\n{body}"))
}

/// KEYS: job, events, stream, idempotency key ('' for none).
/// ARGV: id, spec, total steps, created, request id, provenance, event.
pub static ACCEPT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if KEYS[4] ~= '' then
  local prev = redis.call('GET', KEYS[4])
  if prev then return {'existing', prev} end
end
local entry = redis.call('XADD', KEYS[3], '*', 'id', ARGV[1])
redis.call('HSET', KEYS[1], 'spec', ARGV[2], 'status', 'queued', 'step', '0',
  'total', ARGV[3], 'created', ARGV[4], 'request_id', ARGV[5], 'provenance', ARGV[6],
  'entry', entry, 'owner', '', 'claims', '0', 'idem', KEYS[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000', '*', 'e', ARGV[7])
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[1]) end
return {'new', entry}
"#,
    )
});

/// Entries no replica has read yet, before ARGV[2] (or all of them for '+').
/// KEYS: stream. ARGV: group, entry or '+'.
pub static POSITION: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == ARGV[1] then last = delivered end
end
local unread = redis.call('XRANGE', KEYS[1], '(' .. last, ARGV[2])
if ARGV[2] == '+' or #unread == 0 then return #unread end
return #unread - 1
"#,
    )
});

/// KEYS: job, events, stream, gone. ARGV: group, event, ttl.
pub static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if terminal(redis.call('HGET', KEYS[1], 'status')) then return 'finished' end
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= '' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  return 'requested'
end
local entry = redis.call('HGET', KEYS[1], 'entry')
redis.call('HSET', KEYS[1], 'status', 'cancelled')
redis.call('HDEL', KEYS[1], 'checkpoint')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000', '*', 'e', ARGV[2])
if entry and entry ~= '' then
  redis.call('XACK', KEYS[3], ARGV[1], entry)
  redis.call('XDEL', KEYS[3], entry)
end
ended(KEYS[1], KEYS[2], KEYS[4], tonumber(ARGV[3]))
return 'cancelled'
"#,
    )
});

/// KEYS: job, stream. ARGV: me, entry, group.
pub static TAKE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'skip'} end
if terminal(redis.call('HGET', KEYS[1], 'status')) then return {'skip'} end
if redis.call('HGET', KEYS[1], 'entry') ~= ARGV[2] then return {'skip'} end
local prev = redis.call('HGET', KEYS[1], 'owner') or ''
if prev == ARGV[1] then prev = '' end
if prev ~= '' then redis.call('HINCRBY', KEYS[1], 'claims', 1) end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
return {'ok', prev, redis.call('HGET', KEYS[1], 'spec') or '',
  redis.call('HGET', KEYS[1], 'checkpoint') or ''}
"#,
    )
});

/// KEYS: stream, then one job hash per entry. ARGV: group, me, then the entries.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {}
for i = 2, #KEYS do
  if redis.call('HGET', KEYS[i], 'owner') == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i + 1], 'JUSTID')
    if redis.call('HGET', KEYS[i], 'cancel') == '1' then
      out[#out + 1] = 'cancel'
    else
      out[#out + 1] = 'held'
    end
  elseif terminal(redis.call('HGET', KEYS[i], 'status')) then
    -- Its end was just written: nothing to keep alive, nothing lost.
    out[#out + 1] = 'held'
  else
    out[#out + 1] = 'lost'
  end
end
return out
"#,
    )
});

/// KEYS: job, events. ARGV: me, status, step, provenance ('' keeps it), event ('' for none).
pub static PROGRESS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'step', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'provenance', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000', '*', 'e', ARGV[5]) end
return 1
"#,
    )
});

/// KEYS: job. ARGV: me, step, bytes.
pub static CHECKPOINT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'checkpoint', ARGV[3], 'checkpoint_step', ARGV[2])
return 1
"#,
    )
});

/// KEYS: job, events, stream, gone.
/// ARGV: me, status, error, result, provenance, event, entry, group, ttl.
pub static FINISH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'error', ARGV[3], 'result', ARGV[4], 'owner', '')
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'provenance', ARGV[5]) end
if ARGV[2] == 'completed' then
  redis.call('HSET', KEYS[1], 'step', redis.call('HGET', KEYS[1], 'total'))
end
redis.call('HDEL', KEYS[1], 'checkpoint', 'cancel')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000', '*', 'e', ARGV[6])
redis.call('XACK', KEYS[3], ARGV[8], ARGV[7])
redis.call('XDEL', KEYS[3], ARGV[7])
ended(KEYS[1], KEYS[2], KEYS[4], tonumber(ARGV[9]))
return 1
"#,
    )
});

/// KEYS: job, events, stream. ARGV: me, entry, group, step, checkpoint ('' keeps the last), event, id.
pub static HAND_BACK: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return '' end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'checkpoint', ARGV[5], 'checkpoint_step', ARGV[4])
end
local entry = redis.call('XADD', KEYS[3], '*', 'id', ARGV[7])
redis.call('HSET', KEYS[1], 'owner', '', 'status', 'queued', 'entry', entry)
redis.call('XACK', KEYS[3], ARGV[3], ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '1000', '*', 'e', ARGV[6])
return entry
"#,
    )
});
