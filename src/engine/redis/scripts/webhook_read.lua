-- Reads entries never handed out to the dispatch group (XREADGROUP ... >, not blocking) and,
-- in the same atomic step, finds out whether entries the group had not read yet were trimmed
-- from the log (the dispatchers fell behind by more than the retention): Herald never XDELs
-- events, so the log holds every entry from its first one on, and
--   trimmed before the group read them = (entries-added - length) - the group's entries-read.
-- Such a gap is recorded (lost list, capped), counted as read, and returned. Checked and read in one script, so
-- no read can cross a gap unseen and exactly one claim reports each gap. Redis 7 or later
-- (entries-added, entries-read); on older servers the check is skipped.
--
-- Several partitions at once (one Redis: all of them in one call; a cluster: one each, since a
-- script touches one slot), each as if alone.
--
-- KEYS: per partition: its events stream, its lost list
-- ARGV: 1 dispatch group, 2 consumer, 3 count (per partition), 4 now ms, 5 gaps kept
-- Returns: per partition, in KEYS order: {'nogroup'} | {'ok', entries (XREADGROUP's reply,
--          false for none), gap (false, or {after id, before id, count}), the group's
--          last-delivered id after the read}
local group = ARGV[1]
local function field(flat, name)
  for i = 1, #flat, 2 do
    if flat[i] == name then
      return flat[i + 1]
    end
  end
  return nil
end

local function read(stream, lost_list)
  if redis.call('EXISTS', stream) == 0 then
    return {'nogroup'}
  end
  local info = redis.call('XINFO', 'STREAM', stream)
  local mine = nil
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    if field(g, 'name') == group then
      mine = g
    end
  end
  if not mine then
    return {'nogroup'}
  end
  local gap = false
  local added, length = field(info, 'entries-added'), field(info, 'length')
  local read, first = field(mine, 'entries-read'), field(info, 'first-entry')
  if type(added) == 'number' and type(read) == 'number' and type(first) == 'table' then
    local lost = (added - length) - read
    if lost > 0 then
      gap = {field(mine, 'last-delivered-id'), first[1], lost}
      -- Redis keeps counting reads one by one across the gap: count the lost ones as read, so
      -- the gap is reported once.
      redis.call('XGROUP', 'SETID', stream, group, gap[1], 'ENTRIESREAD', read + lost)
      redis.call('RPUSH', lost_list, cjson.encode({afterId = gap[1], beforeId = gap[2],
        count = lost, detectedAtMs = tonumber(ARGV[4])}))
      redis.call('LTRIM', lost_list, -tonumber(ARGV[5]), -1)
    end
  end
  local entries = redis.call('XREADGROUP', 'GROUP', group, ARGV[2], 'COUNT', ARGV[3], 'STREAMS',
    stream, '>')
  local last = field(mine, 'last-delivered-id')
  if entries and entries[1] then
    local read_now = entries[1][2]
    last = read_now[#read_now][1]
  end
  return {'ok', entries, gap, last}
end

local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = read(KEYS[i], KEYS[i + 1])
end
return out
