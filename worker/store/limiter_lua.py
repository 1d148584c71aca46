"""The shared limiter's Lua script (see :mod:`worker.store.limiter` for what it keeps).

KEYS[1] the limiter hash. ARGV: op (``acquire``, ``wait``, ``throttled``, ``answered``,
``unreachable``, ``peek``), the limit (requests/s), now (µs; empty: Redis's clock), the
retry-after pause (ms), ``after``, ``probe_base`` and ``probe_cap`` (µs), and the Redis time
(µs) at which the answered request was granted its slot.
"""

from __future__ import annotations

SCRIPT = """
local key, op, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local after, probe_base, probe_cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local s = redis.call('HMGET', key, 'tat', 'rate', 'ceiling', 'updated', 'last_cut', 'down',
  'probe_at', 'probes', 'failing', 'last_fail', 'answered')
local tat = tonumber(s[1]) or now
local rate = math.min(tonumber(s[2]) or limit, limit)
local ceiling = tonumber(s[3]) or 0
local updated = tonumber(s[4]) or now
local last_cut = tonumber(s[5]) or 0
local down, probe_at, probes = tonumber(s[6]) or 0, tonumber(s[7]) or 0, tonumber(s[8]) or 0
local failing, last_fail = tonumber(s[9]) or 0, tonumber(s[10]) or 0
local answered = tonumber(s[11]) or 0
local dt = math.max(0, now - updated) / 1000000
if rate < limit and dt > 0 then
  if rate < 0.9 * ceiling then
    -- Fast back to 90% of the rate that was throttled, then a slow probe from there.
    rate = math.min(0.9 * ceiling, rate + limit * 0.05 * dt)
  elseif rate <= 1.05 * ceiling then
    rate = rate + ceiling * 0.005 * dt
  else
    rate = rate + limit * 0.05 * dt
  end
  rate = math.min(limit, rate)
end
local state, wait, down_for = 'up', 0, 0
if down > 0 then down_for = now - down end
if op == 'throttled' then
  if now - last_cut >= 1000000 then
    ceiling = rate
    -- The floor stays below the limit, however low the limit is.
    rate = math.max(math.min(1, limit * 0.05), rate * 0.7)
    last_cut = now
  end
  -- A retry-after hint pauses everyone: at most 300 s, whatever a caller passes.
  local pause = math.min(tonumber(ARGV[4]) or 0, 300000) * 1000
  if not (pause > 0) then pause = 1000000 / rate end
  tat = math.max(tat, now + pause)
elseif op == 'acquire' or op == 'wait' then
  -- 'wait' never takes the probe: only a request that reports its outcome may probe.
  if down > 0 and (now < probe_at or op == 'wait') then
    -- The endpoint is away: nobody sends until the next probe is due.
    state, wait = 'paused', probe_at - now
  else
    if down > 0 then
      -- This caller's request is the fleet's one probe; the next is due after a back-off.
      state, probes = 'probe', probes + 1
      probe_at = now + math.min(probe_cap, probe_base * 2 ^ math.min(probes, 20))
    end
    tat = math.max(tat, now) + 1000000 / rate
    wait = tat - 1000000 / rate - now
  end
elseif op == 'answered' then
  answered, failing = now, 0
  -- Only a request sent during the outage (a probe) proves that the endpoint is back.
  if down > 0 and tonumber(ARGV[8]) >= down then
    state, down, probe_at = 'resumed', 0, 0
  end
elseif op == 'peek' then
  if down > 0 then state, wait = 'paused', math.max(0, probe_at - now) end
elseif op == 'unreachable' then
  if down > 0 then
    state = 'down'
  else
    -- A failure long after the last one starts a new window: an hour-old reset says nothing.
    -- "Long" outlasts the longest retry back-off (30 s), so a batch's own retries never do.
    if failing == 0 or now - last_fail > math.max(after, 60000000) then failing = now end
    if now - failing >= after and answered < failing then
      state, down, probes, down_for = 'started', now, 0, 0
      probe_at = now + probe_base
    end
  end
  last_fail = now
end
if state ~= 'resumed' and down == 0 then probes = 0 end
redis.call('HSET', key, 'tat', string.format('%.0f', tat), 'rate', string.format('%.6f', rate),
  'ceiling', string.format('%.6f', ceiling), 'updated', string.format('%.0f', now),
  'last_cut', string.format('%.0f', last_cut), 'down', string.format('%.0f', down),
  'probe_at', string.format('%.0f', probe_at), 'probes', probes,
  'failing', string.format('%.0f', failing), 'last_fail', string.format('%.0f', last_fail),
  'answered', string.format('%.0f', answered))
redis.call('PEXPIRE', key, 3600000)
return {string.format('%.0f', math.max(0, wait)), string.format('%.6f', rate),
  string.format('%.0f', math.max(0, tat - now)), state, string.format('%.0f', now),
  string.format('%.0f', down_for), probes}
"""
