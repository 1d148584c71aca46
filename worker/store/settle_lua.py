"""The Lua of settling and handing back (:mod:`worker.store.settle` says what each step is for).

Both scripts check the type of every key they write before writing any: Lua does not roll
back a script that fails half-way, so a failed write must not come after an acknowledgement.
"""

from __future__ import annotations

WRONG_TYPE = """
local function wrong_type(key, kind)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= kind then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. kind .. ': nothing written'
  end
  return false
end
"""
"""Lua: ``wrong_type(key, kind)``, an error text when ``key`` exists and is not a ``kind``.
Scripts call it for every key they write before writing any (Lua does not roll back)."""

# KEYS: 1 the stream read, 2 dead letters, 3 reconcile records, 4 in-flight leases, 5 where
# this settlement's reply is kept. ARGV: 1 group, 2 consumer, 3 seen prefix, 4 bucket
# seconds, 5 dedupe TTL seconds, 6 reply TTL seconds, 7 entry ids to ack, 8 confirmed
# digests, 9 numbers whose leases to release, 10 each one's batch, 11 how many dead letters,
# 12 digests of the other outcomes' numbers (not listed, dead-lettered), then the dead letters
# and the reconcile records (flat JSON lists).
SETTLE = (
    WRONG_TYPE
    + """
local group, consumer, seen_prefix = ARGV[1], ARGV[2], ARGV[3]
local bucket_len, ttl_s, reply_ttl_s = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function split(blob)
  local items = {}
  for item in string.gmatch(blob, '[^\\n]+') do items[#items + 1] = item end
  return items
end
-- 1. A repeat of this call (its reply was lost) answers what the first run answered.
local done = redis.call('GET', KEYS[5])
if done then return {tonumber(done), 1} end
local ids, n_dead = split(ARGV[7]), tonumber(ARGV[11])
local numbers, batches = split(ARGV[9]), split(ARGV[10])
-- seen[i] = {hash, field, always}: confirmed numbers are remembered always, the other
-- outcomes only with the outcome itself.
local seen, expire_at = {}, 0
if #ARGV[8] + #ARGV[12] > 0 and ttl_s > 0 then
  local bucket = math.floor(tonumber(redis.call('TIME')[1]) / bucket_len)
  expire_at = (bucket + 1) * bucket_len + ttl_s
  for _, set in ipairs({{ARGV[8], true}, {ARGV[12], false}}) do
    local digests = set[1]
    for j = 1, #digests, 12 do
      local shard = (string.byte(digests, j) * 256 + string.byte(digests, j + 1)) % 4096
      local hash = seen_prefix .. bucket .. ':' .. shard
      seen[#seen + 1] = {hash, string.sub(digests, j + 2, j + 11), set[2]}
    end
  end
end
-- 2. Every key written below is checked before the first write.
local written = {}
if n_dead > 0 then written[#written + 1] = {KEYS[2], 'stream'} end
if #ARGV > 12 + n_dead then written[#written + 1] = {KEYS[3], 'stream'} end
if #numbers > 0 then written[#written + 1] = {KEYS[4], 'hash'} end
local checked = {}
for _, s in ipairs(seen) do
  if not checked[s[1]] then
    checked[s[1]] = true
    written[#written + 1] = {s[1], 'hash'}
  end
end
for _, w in ipairs(written) do
  local err = wrong_type(w[1], w[2])
  if err then return redis.error_reply(err) end
end
-- 3. All or nothing: every entry must still be pending on this consumer.
local not_owned = 0
for _, id in ipairs(ids) do
  local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  if not (p[1] and p[1][2] == consumer) then not_owned = not_owned + 1 end
end
-- 4. Outcomes first, then dedupe memory, leases, this reply; XACK and XDEL last.
if not_owned == 0 then
  for j = 13, 12 + n_dead do
    redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(ARGV[j])))
  end
  for j = 13 + n_dead, #ARGV do
    redis.call('XADD', KEYS[3], '*', unpack(cjson.decode(ARGV[j])))
  end
end
-- Confirmed numbers are remembered even when the entries are not ours: the API did confirm
-- them. Another outcome is the holder's to write, and so is its memory.
local expiring = {}
for _, s in ipairs(seen) do
  if s[3] or not_owned == 0 then
    redis.call('HSET', s[1], s[2], '1')
    if not expiring[s[1]] then
      expiring[s[1]] = true
      redis.call('EXPIREAT', s[1], expire_at)
    end
  end
end
-- Only the lease of the entry's own batch: another batch of this consumer may be sending a
-- duplicate of the number right now, and a lease that expired and was taken by another
-- replica belongs to that replica's request.
for i, number in ipairs(numbers) do
  local lease = consumer .. '|' .. batches[i] .. '|'
  local held = redis.call('HGET', KEYS[4], number)
  if held and string.sub(held, 1, #lease) == lease then redis.call('HDEL', KEYS[4], number) end
end
redis.call('SET', KEYS[5], not_owned, 'EX', reply_ttl_s)
if not_owned == 0 then
  -- Chunks keep every call far below Lua's unpack limit (about 8000 values): duplicates
  -- ride along in a batch, so one batch may carry thousands of entries.
  for i = 1, #ids, 1000 do
    local last = math.min(i + 999, #ids)
    redis.call('XACK', KEYS[1], group, unpack(ids, i, last))
    redis.call('XDEL', KEYS[1], unpack(ids, i, last))
  end
end
return {not_owned, 0}
"""
)

# KEYS: 1 the stream, 2 in-flight leases. ARGV: 1 group, 2 consumer, then per entry its id,
# its fields (a flat JSON list) and the lease prefix its batch holds ('' for none).
HAND_BACK = (
    WRONG_TYPE
    + """
local group, consumer = ARGV[1], ARGV[2]
-- The stream's type is checked by the first XPENDING, before anything is written.
local err = wrong_type(KEYS[2], 'hash')
if err then return redis.error_reply(err) end
local moved = 0
for j = 3, #ARGV, 3 do
  -- Only entries still pending on this consumer: one claimed away meanwhile is another's,
  -- and one handed back already (a repeated call) is not pending any more.
  local p = redis.call('XPENDING', KEYS[1], group, ARGV[j], ARGV[j], 1)
  if p[1] and p[1][2] == consumer then
    local fields = cjson.decode(ARGV[j + 1])
    redis.call('XADD', KEYS[1], '*', unpack(fields))
    -- Release only the lease of this entry's own batch ('consumer|batch|'): a duplicate of a
    -- number another batch of ours is sending must leave that batch's lease alone.
    local lease = ARGV[j + 2]
    if lease ~= '' then
      local held = redis.call('HGET', KEYS[2], fields[2])
      if held and string.sub(held, 1, #lease) == lease then
        redis.call('HDEL', KEYS[2], fields[2])
      end
    end
    redis.call('XACK', KEYS[1], group, ARGV[j])
    redis.call('XDEL', KEYS[1], ARGV[j])
    moved = moved + 1
  end
end
return moved
"""
)
