// The Usage tab (GET …/metrics polled into uPlot charts) and the Events tab (GET …/events).
import uPlot from "/ui/vendor/uPlot.esm.js";
import { get } from "./api.js";
import { age, bytes, clear, errorBox, h, stylesheet } from "./dom.js";

stylesheet("/ui/vendor/uPlot.min.css");

const SAMPLE_MS = 2000;
const KEEP = 150; // five minutes of samples

function chart(title, unit, width) {
  return new uPlot({
    title, width, height: 160,
    scales: { x: { time: true } },
    axes: [{}, { size: 60, values: (u, ticks) => ticks.map((v) => unit(v)) }],
    series: [{}, { label: title, stroke: "#3b82f6", width: 2, fill: "rgba(59,130,246,0.1)" }],
  }, [[], []]);
}

export function usageTab(panel, row, id) {
  const summary = h("p", { class: "muted", "aria-live": "polite" }, "Sampling…");
  const grid = h("div", { class: "charts" });
  const problem = h("div");
  clear(panel, summary, problem, grid);
  const width = Math.max(260, Math.min(560, panel.clientWidth - 20));
  const charts = {
    cpu: chart("CPU %", (v) => `${v.toFixed(0)}%`, width),
    mem: chart("Memory", (v) => bytes(v), width),
    pids: chart("Processes", (v) => v.toFixed(0), width),
    net: chart("Network in+out /s", (v) => `${bytes(v)}/s`, width),
  };
  for (const c of Object.values(charts)) grid.append(c.root);
  const series = { t: [], cpu: [], mem: [], pids: [], net: [] };
  let last = null;
  let timer = null;
  let stopped = false;

  async function sample() {
    try {
      const m = (await get(`/sandboxes/${id}/metrics`)).data;
      if (stopped) return;
      clear(problem);
      const t = Date.parse(m.sampledAt) / 1000;
      const net = (m.rxBytes ?? 0) + (m.txBytes ?? 0);
      let cpu = null;
      let rate = null;
      if (last && m.cpuUsageNs != null && last.cpuUsageNs != null && t > last.t) {
        cpu = Math.max(0, (m.cpuUsageNs - last.cpuUsageNs) / 1e9 / (t - last.t) * 100);
        rate = Math.max(0, (net - last.net) / (t - last.t));
      }
      last = { t, cpuUsageNs: m.cpuUsageNs, net };
      for (const [k, v] of [["t", t], ["cpu", cpu], ["mem", m.memoryBytes], ["pids", m.pids], ["net", rate]]) {
        series[k].push(v);
        if (series[k].length > KEEP) series[k].shift();
      }
      for (const k of ["cpu", "mem", "pids", "net"]) charts[k].setData([series.t, series[k]]);
      summary.textContent = m.memoryBytes == null
        ? `The sandbox is ${m.status}: no usage to show until it runs.`
        : `Memory ${bytes(m.memoryBytes)} of ${bytes(m.memoryLimitBytes)}, ${m.pids ?? "?"} processes, ` +
          `${m.oomKills ?? 0} OOM kills, disk limit ${m.diskLimitMb ?? "?"} MiB, received ${bytes(m.rxBytes)}, sent ${bytes(m.txBytes)}` +
          (m.lastActivityAt ? `, idle for ${age(m.lastActivityAt)}.` : ".");
    } catch (err) {
      if (!stopped) clear(problem, errorBox(err));
    }
    if (!stopped) timer = setTimeout(sample, SAMPLE_MS);
  }
  sample();
  return () => { stopped = true; clearTimeout(timer); for (const c of Object.values(charts)) c.destroy(); };
}

export function eventsTab(panel, row, id) {
  const list = h("div");
  clear(panel, list);
  async function load() {
    try {
      const events = (await get(`/sandboxes/${id}/events`, { limit: 200 })).data;
      if (!events.length) { clear(list, h("p", { class: "empty" }, "No events recorded for this sandbox yet.")); return; }
      clear(list, h("ol", { class: "events" }, events.map((e) => h("li", {},
        h("time", { datetime: e.createdAt }, new Date(e.createdAt).toLocaleString()), " ",
        h("strong", {}, e.kind.replace(/^sandbox\./, "")), " ",
        Object.keys(e.data || {}).length ? h("code", {}, JSON.stringify(e.data)) : ""))));
    } catch (err) { clear(list, errorBox(err)); }
  }
  load();
  const leave = () => {};
  leave.statusChanged = () => load();
  return leave;
}
