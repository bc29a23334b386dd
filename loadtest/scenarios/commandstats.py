#!/usr/bin/env python3
"""Redis commands and Redis CPU per unit of work (an order, a delivery), for
loadtest/scenarios/commandstats.sh. It never talks to Redis itself: the script hands it text.

  commandstats.py info OUT.json < INFO-text       INFO commandstats/cpu -> JSON
  commandstats.py monitor OUT.json [SCRIPTS-DIR [MARKER]] < MONITOR-stream
                                                  who sent each command: a client, a script
                                                  (and which one), or a client inside MULTI
  commandstats.py compute ARGS...                 the per-unit figures (see compute())
  commandstats.py test                            the parsers' self-test

Why MONITOR: `INFO commandstats` counts a command called from a Lua script under its own name
too (an HSET inside EVALSHA adds to cmdstat_hset) and EVALSHA's usec already includes its
inner calls; Herald sends HSET, XACK, XADD, ... both directly and from scripts, so which calls
were round trips cannot be told from the script sources. MONITOR tags every script call
`[0 lua]`, so one pass under MONITOR gives the split exactly; its usec are not used (MONITOR
slows Redis), a second pass without it gives the time.
"""

import hashlib
import json
import os
import sys

# Commands whose commandstats name carries the subcommand (`config|resetstat`).
CONTAINERS = {
    "acl", "client", "cluster", "command", "config", "debug", "function", "latency", "memory",
    "module", "object", "pubsub", "script", "slowlog", "xgroup", "xinfo",
}
# Commands that run a script: their usec includes the script's inner calls.
SCRIPT_CALLS = {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}


def parse_info(text):
    """INFO text -> {"commandstats": {cmd: {calls, usec, failed_calls, rejected_calls}},
    "cpu": {field: float}}."""
    stats, cpu = {}, {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("cmdstat_"):
            name, _, fields = line[len("cmdstat_"):].partition(":")
            values = dict(f.split("=", 1) for f in fields.split(",") if "=" in f)
            stats[name] = {
                k: int(values.get(k, 0)) for k in ("calls", "usec", "failed_calls", "rejected_calls")
            }
        elif line.startswith("used_cpu_"):
            k, _, v = line.partition(":")
            cpu[k] = float(v)
    return {"commandstats": stats, "cpu": cpu}


def _quoted(s, start):
    """The quoted token of MONITOR's output starting at s[start] == '"': (text, end)."""
    i, out = start + 1, []
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append(s[i:i + 2])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), i


def _unescape(token):
    """Undoes Redis' sdscatrepr escaping (enough for script bodies)."""
    table = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", '"': '"', "\\": "\\"}
    out, i = [], 0
    while i < len(token):
        c = token[i]
        if c == "\\" and i + 1 < len(token):
            n = token[i + 1]
            if n == "x" and i + 3 < len(token):
                out.append(chr(int(token[i + 2:i + 4], 16)))
                i += 4
                continue
            out.append(table.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_monitor_line(line):
    """`1700000000.1 [0 127.0.0.1:5555] "HSET" "k" ...` -> (source, name, args[:2]) with
    source "lua" for script calls; None for anything else (MONITOR's "OK")."""
    if " [" not in line:
        return None
    head, _, rest = line.partition(" [")
    source, _, rest = rest.partition("] ")
    if not head.replace(".", "").isdigit() or not rest.startswith('"'):
        return None
    source = source.split(" ", 1)[1] if " " in source else source
    name, end = _quoted(rest, 0)
    args = []
    pos = end
    while len(args) < 2 and pos + 1 < len(rest) and rest[pos] == " " and rest[pos + 1] == '"':
        a, pos = _quoted(rest, pos + 1)
        args.append(a)
    return source, name.lower(), args


def script_names(scripts_dir):
    """sha1 of each `*.lua` in the folder -> its file stem (what EVALSHA names)."""
    names = {}
    if scripts_dir and os.path.isdir(scripts_dir):
        for f in sorted(os.listdir(scripts_dir)):
            if f.endswith(".lua"):
                with open(os.path.join(scripts_dir, f), "rb") as fh:
                    names[hashlib.sha1(fh.read()).hexdigest()] = f[:-4]
    return names


class MonitorCounts:
    """Counts a MONITOR stream: per command, calls by a client (`client`), from a script
    (`lua`) and queued inside a client's MULTI (`multi`); per script, its calls and the
    commands it made (a script's calls follow its own line: scripts are atomic)."""

    def __init__(self, names=None):
        self.names = names or {}
        self.commands = {}
        self.scripts = {}
        self.in_multi = set()
        self.current = None
        self.lines = 0

    def _script_key(self, name, args):
        if name in ("evalsha", "evalsha_ro") and args:
            sha = args[0].lower()
            return self.names.get(sha, "sha:" + sha[:12])
        if name in ("fcall", "fcall_ro") and args:
            return "function:" + args[0]
        body = _unescape(args[0]) if args else ""
        sha = hashlib.sha1(body.encode("latin-1", "replace")).hexdigest()
        return self.names.get(sha, "eval:" + (body.strip().splitlines() or [""])[0][:40])

    def add(self, line):
        parsed = parse_monitor_line(line)
        if parsed is None:
            return
        source, name, args = parsed
        self.lines += 1
        if name in CONTAINERS and args:
            name = name + "|" + args[0].lower()
        if source == "lua":
            kind = "lua"
            if self.current is not None:
                inner = self.scripts[self.current]["inner"]
                inner[name] = inner.get(name, 0) + 1
        else:
            kind = "multi" if source in self.in_multi and name not in ("exec", "discard") else "client"
            if name == "multi":
                self.in_multi.add(source)
            elif name in ("exec", "discard"):
                self.in_multi.discard(source)
            self.current = None
            if name in SCRIPT_CALLS:
                self.current = self._script_key(name, args)
                s = self.scripts.setdefault(self.current, {"calls": 0, "inner": {}})
                s["calls"] += 1
        c = self.commands.setdefault(name, {"client": 0, "lua": 0, "multi": 0})
        c[kind] += 1

    def json(self):
        return {"lines": self.lines, "commands": self.commands, "scripts": self.scripts}


def _sub_own(stats, own):
    """The commandstats without the calls the measuring script made itself."""
    out = {k: dict(v) for k, v in stats.items()}
    for name, n in own.items():
        if name in out:
            out[name]["calls"] -= n
            if out[name]["calls"] <= 0:
                del out[name]
    return out


def _cpu_seconds(cpu):
    return cpu.get("used_cpu_sys", 0.0) + cpu.get("used_cpu_user", 0.0)


def compute(timing, timing_cpu_before, monitor_info, monitor, idle, units, units_monitor,
            own_timing, own_monitor, publisher=None):
    """The per-unit figures. `timing`: INFO after the pass without MONITOR (`timing_cpu_before`:
    its INFO cpu just before RESETSTAT); `monitor_info` and `monitor`: INFO after, and the
    MONITOR counts of, the pass under MONITOR; `idle`: {"seconds", "info"} of an idle
    window; `units`/`units_monitor`: orders or deliveries of each pass; `own_*`: calls the
    measuring script made itself (removed); `publisher`: {command: (calls in the timing pass,
    calls in the monitor pass)} the load generator sent (removed, reported as `excluded`)."""
    ts = _sub_own(timing["commandstats"], own_timing)
    ms = _sub_own(monitor_info["commandstats"], own_monitor)
    mon = {k: dict(v) for k, v in monitor["commands"].items()}
    # The load generator's own commands (the webhooks phase's XADDs of the events) are not
    # Herald's: out of the counts, shown apart.
    excluded = {}
    for name, (n_timing, n_monitor) in (publisher or {}).items():
        st = ts.get(name)
        if st and st["calls"]:
            usec = st["usec"] * min(n_timing, st["calls"]) / st["calls"]
            excluded[name] = {"calls_per_unit": n_timing / units, "usec_per_unit": usec / units}
            st["calls"] -= min(n_timing, st["calls"])
            st["usec"] -= usec
        if name in ms:
            ms[name]["calls"] -= min(n_monitor, ms[name]["calls"])
        if name in mon:
            mon[name]["client"] -= min(n_monitor, mon[name]["client"])
    by_command, tot = {}, {"executed": 0.0, "sent": 0.0, "in_script": 0.0, "usec_top": 0.0,
                           "usec_naive": 0.0, "usec_in_script": 0.0}
    upc = {}
    for name, st in sorted(ts.items()):
        m = mon.get(name)
        seen = m is not None and sum(m.values()) > 0
        total = sum(m.values()) if seen else 1
        client = m["client"] / total if seen else 1.0
        lua = m["lua"] / total if seen else 0.0
        multi = m["multi"] / total if seen else 0.0
        upc[name] = st["usec"] / st["calls"] if st["calls"] else 0.0
        if st["calls"] <= 0:
            continue
        row = {
            "executed": st["calls"] / units,
            "sent_by_clients": st["calls"] * (client + multi) / units,
            "in_scripts": st["calls"] * lua / units,
            "usec_top_level": st["usec"] * client / units,
            "usec_all_calls": st["usec"] / units,
            "usec_per_call": upc[name],
            "seen_by_monitor": seen,
        }
        by_command[name] = row
        tot["executed"] += row["executed"]
        tot["sent"] += row["sent_by_clients"]
        tot["in_script"] += row["in_scripts"]
        tot["usec_top"] += row["usec_top_level"]
        tot["usec_naive"] += row["usec_all_calls"]
        tot["usec_in_script"] += st["usec"] * lua / units
    # Scripts: the overhead of a script call beyond its inner commands, spread evenly.
    script_usec = sum(ts[n]["usec"] for n in ts if n in SCRIPT_CALLS)
    script_calls = sum(ts[n]["calls"] for n in ts if n in SCRIPT_CALLS)
    overhead = (script_usec - tot["usec_in_script"] * units) / script_calls if script_calls else 0.0
    by_script = {}
    for key, s in sorted(monitor["scripts"].items(), key=lambda kv: -kv[1]["calls"]):
        inner_usec = sum(n * upc.get(c, 0.0) for c, n in s["inner"].items())
        by_script[key] = {
            "calls": s["calls"] / units_monitor,
            "inner_commands_per_call": sum(s["inner"].values()) / s["calls"],
            "inner": {c: n / s["calls"] for c, n in sorted(s["inner"].items(), key=lambda kv: -kv[1])},
            "usec_estimate": (s["calls"] * overhead + inner_usec) / units_monitor,
        }
    cpu_before = _cpu_seconds(timing_cpu_before)
    cpu_after = _cpu_seconds(timing["cpu"])
    idle_stats = idle["info"]["commandstats"]
    idle_s = idle["seconds"]
    idle_calls = sum(v["calls"] for k, v in idle_stats.items() if k != "config|resetstat")
    mon_executed = sum(v["calls"] for v in ms.values()) / units_monitor
    return {
        "units": units,
        "units_monitor_pass": units_monitor,
        "per_unit": {
            "commands_executed": tot["executed"],
            "commands_sent_by_clients": tot["sent"],
            "commands_in_scripts": tot["in_script"],
            "script_calls": script_calls / units,
            "usec_top_level": tot["usec_top"],
            "usec_naive_sum": tot["usec_naive"],
            "redis_process_cpu_usec": (cpu_after - cpu_before) * 1e6 / units,
            "commands_executed_monitor_pass": mon_executed,
        },
        "excluded_load_generator": excluded,
        "by_command": by_command,
        "by_script": by_script,
        "script_overhead_usec_per_call": overhead,
        "idle": {
            "seconds": idle_s,
            "commands_per_s": idle_calls / idle_s if idle_s else None,
            "commands": {k: v["calls"] for k, v in sorted(idle_stats.items())},
        },
    }


def render(results):
    """Markdown tables of one or more compute() results (one column per run)."""
    out = []
    first = results[0]
    cols = " | ".join(r["label"] for r in results)
    sep = "|".join(["---"] * (len(results) + 1))
    rows = [
        ("Redis commands executed", "commands_executed", 2),
        ("  sent by clients (top-level commands)", "commands_sent_by_clients", 2),
        ("  called from scripts", "commands_in_scripts", 2),
        ("  of which script calls (EVALSHA/FCALL)", "script_calls", 2),
        ("Redis usec, top-level commands (commandstats)", "usec_top_level", 1),
        ("Redis usec, naive sum over all commands (double counts scripts)", "usec_naive_sum", 1),
        ("Redis process CPU usec (INFO cpu, incl. I/O, AOF, background)", "redis_process_cpu_usec", 1),
    ]
    out.append(f"| per {first['unit']} | {cols} |\n|{sep}|")
    for title, key, digits in rows:
        vals = " | ".join(f"{r['per_unit'][key]:.{digits}f}" for r in results)
        out.append(f"| {title} | {vals} |")
    mon = " | ".join(f"{r['per_unit']['commands_executed_monitor_pass']:.2f}" for r in results)
    out.append(f"| Redis commands executed, MONITOR pass (a check) | {mon} |")
    out.append(f"| {first['unit']} count | " + " | ".join(str(r["units"]) for r in results) + " |")
    idle = " | ".join(f"{r['idle']['commands_per_s']:.1f}" for r in results)
    out.append(f"| idle background, commands/s | {idle} |")
    for name, e in first.get("excluded_load_generator", {}).items():
        out.append(f"| not counted: the load generator's {name} | " + " | ".join(
            f"{r['excluded_load_generator'][name]['calls_per_unit']:.2f} calls, "
            f"{r['excluded_load_generator'][name]['usec_per_unit']:.1f} usec" for r in results) + " |")
    out.append("")
    out.append(f"By command, per {first['unit']} (run {first['label']}):\n")
    out.append("| command | executed | sent by clients | from scripts | usec top-level | usec/call |")
    out.append("|---|---|---|---|---|---|")
    for name, r in sorted(first["by_command"].items(), key=lambda kv: -kv[1]["executed"]):
        if r["executed"] < 0.005:
            continue
        out.append(f"| {name} | {r['executed']:.2f} | {r['sent_by_clients']:.2f} | "
                   f"{r['in_scripts']:.2f} | {r['usec_top_level']:.1f} | {r['usec_per_call']:.1f} |")
    out.append("")
    out.append(f"By script, per {first['unit']} (MONITOR pass; usec estimated, see the method):\n")
    out.append("| script | calls | inner commands/call | inner commands | usec (est.) |")
    out.append("|---|---|---|---|---|")
    for name, s in first["by_script"].items():
        if s["calls"] < 0.005:
            continue
        inner = ", ".join(f"{c} {n:.2f}" for c, n in s["inner"].items())
        out.append(f"| {name} | {s['calls']:.3f} | {s['inner_commands_per_call']:.2f} | "
                   f"{inner} | {s['usec_estimate']:.1f} |")
    return "\n".join(out) + "\n"


def _load(path):
    with open(path) as f:
        return json.load(f)


def _dump(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


def self_test():
    info = parse_info(
        "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=500,usec_per_call=50.00,rejected_calls=0,"
        "failed_calls=1\r\ncmdstat_config|resetstat:calls=1,usec=3,usec_per_call=3.00,"
        "rejected_calls=0,failed_calls=0\r\n# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:0.25\r\n")
    assert info["commandstats"]["evalsha"] == {"calls": 10, "usec": 500, "failed_calls": 1,
                                               "rejected_calls": 0}
    assert info["commandstats"]["config|resetstat"]["calls"] == 1
    assert _cpu_seconds(info["cpu"]) == 1.75
    assert parse_monitor_line("OK") is None
    assert parse_monitor_line('1.5 [0 127.0.0.1:1] "HSET" "a \\"b" "c"') == (
        "127.0.0.1:1", "hset", ['a \\"b', "c"])
    body = "return redis.call('GET', KEYS[1])\n"
    sha = hashlib.sha1(body.encode()).hexdigest()
    m = MonitorCounts({sha: "get"})
    for line in [
        "OK",
        f'1.0 [0 127.0.0.1:1] "evalsha" "{sha}" "1" "k"',
        '1.1 [0 lua] "GET" "k"',
        '1.2 [0 127.0.0.1:2] "MULTI"',
        '1.3 [0 127.0.0.1:2] "HSET" "h" "f" "v"',
        '1.4 [0 127.0.0.1:1] "XACK" "s" "g" "1-1"',
        '1.5 [0 127.0.0.1:2] "EXEC"',
        '1.6 [0 127.0.0.1:1] "eval" "return redis.call(\'GET\', KEYS[1])\\n" "1" "k"',
        '1.7 [0 lua] "GET" "k"',
        '1.8 [0 127.0.0.1:1] "CONFIG" "RESETSTAT"',
    ]:
        m.add(line)
    j = m.json()
    assert j["commands"]["get"] == {"client": 0, "lua": 2, "multi": 0}, j
    assert j["commands"]["hset"] == {"client": 0, "lua": 0, "multi": 1}, j
    assert j["commands"]["xack"]["client"] == 1 and j["commands"]["exec"]["client"] == 1, j
    assert j["commands"]["config|resetstat"]["client"] == 1, j
    assert j["scripts"]["get"] == {"calls": 2, "inner": {"get": 2}}, j
    timing = parse_info("cmdstat_evalsha:calls=4,usec=100\ncmdstat_get:calls=4,usec=20\n"
                        "cmdstat_xack:calls=2,usec=6\ncmdstat_info:calls=1,usec=9\n"
                        "used_cpu_sys:2.0\nused_cpu_user:0.0\n")
    mon = {"commands": {"evalsha": {"client": 2, "lua": 0, "multi": 0},
                        "get": {"client": 0, "lua": 2, "multi": 0},
                        "xack": {"client": 1, "lua": 0, "multi": 0}},
           "scripts": {"get": {"calls": 2, "inner": {"get": 2}}}}
    r = compute(timing, {"used_cpu_sys": 1.0}, timing, mon,
                {"seconds": 1, "info": parse_info("")}, 2, 2, {"info": 1}, {"info": 1})
    pu = r["per_unit"]
    assert pu["commands_executed"] == 5 and pu["commands_sent_by_clients"] == 3, pu
    assert pu["commands_in_scripts"] == 2 and pu["usec_top_level"] == 53, pu
    assert pu["usec_naive_sum"] == 63 and pu["redis_process_cpu_usec"] == 500000, pu
    assert "info" not in r["by_command"]
    # 100 usec over 4 script calls, 20 of them inner: 20 usec of overhead a call.
    assert r["script_overhead_usec_per_call"] == 20, r
    assert r["by_script"]["get"]["usec_estimate"] == (2 * 20 + 2 * 5) / 2, r
    r = compute(timing, {"used_cpu_sys": 1.0}, timing, mon,
                {"seconds": 1, "info": parse_info("")}, 2, 2, {"info": 1}, {"info": 1},
                {"xack": (2, 1)})
    assert "xack" not in r["by_command"] and r["per_unit"]["commands_sent_by_clients"] == 2, r
    assert r["excluded_load_generator"]["xack"] == {"calls_per_unit": 1, "usec_per_unit": 3}, r
    print("commandstats.py: self-test passed")


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd = argv[1]
    if cmd == "test":
        self_test()
    elif cmd == "info":
        _dump(argv[2], parse_info(sys.stdin.read()))
    elif cmd == "monitor":
        m = MonitorCounts(script_names(argv[3] if len(argv) > 3 else None))
        # An `ECHO <marker>` ends the count: everything before it has been read.
        marker = f'"echo" "{argv[4]}"' if len(argv) > 4 else None
        for line in sys.stdin.buffer:
            text = line.decode("latin-1").rstrip("\r\n")
            if marker and text.endswith(marker):
                break
            m.add(text)
        _dump(argv[2], m.json())
    elif cmd == "compute":
        # compute OUT.json LABEL UNIT UNITS UNITS_MON TIMING.json CPU_BEFORE.json MON_INFO.json
        #         MONITOR.json IDLE.json IDLE_SECONDS EXTRA.json
        #         [PUBLISHED_TIMING PUBLISHED_MONITOR]: XADDs the load generator sent
        (out, label, unit, units, units_mon, timing, cpu_before, mon_info, monitor, idle,
         idle_s, extra) = argv[2:14]
        publisher = {"xadd": (int(argv[14]), int(argv[15]))} if len(argv) > 15 else None
        # The measuring script's own calls after its RESETSTAT (its last INFO does not count
        # itself).
        own = {"config|resetstat": 1, "monitor": 1, "echo": 1}
        r = compute(_load(timing), _load(cpu_before)["cpu"], _load(mon_info), _load(monitor),
                    {"seconds": float(idle_s), "info": _load(idle)}, int(units), int(units_mon),
                    own, own, publisher)
        r = {"scenario": "commandstats", "label": label, "unit": unit, **_load(extra), **r,
             "raw": {"timing_pass": _load(timing), "monitor_pass": _load(mon_info),
                     "monitor": _load(monitor), "timing_cpu_before": _load(cpu_before)}}
        _dump(out, r)
    elif cmd == "render":
        print(render([_load(p) for p in argv[2:]]), end="")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
