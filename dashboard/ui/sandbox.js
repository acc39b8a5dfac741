// One sandbox: its status (polled, so it changes without reload), the lifecycle verbs, and the
// tabs Overview, Terminal, Files, Processes, Usage, Events.
import { api, get, post } from "./api.js";
import { age, clear, confirmDialog, errorBox, h, toast } from "./dom.js";
import { statusBadge } from "./sandboxes.js";
import { filesTab } from "./files.js";
import { processesTab } from "./processes.js";

const REFRESH_MS = 2000;
// xterm.js and uPlot (most of the page weight) load only when their tab is opened.
const lazy = (module, name) => async (...args) => (await import(module))[name](...args);
const TABS = [
  ["overview", "Overview", overviewTab],
  ["terminal", "Terminal", lazy("./terminal.js", "terminalTab")],
  ["files", "Files", filesTab],
  ["processes", "Processes", processesTab],
  ["usage", "Usage", lazy("./usage.js", "usageTab")],
  ["events", "Events", lazy("./usage.js", "eventsTab")],
];
// What each verb is offered from (the server refuses the rest with its own message).
const VERBS = [
  ["start", "Start", ["stopped", "error"]],
  ["pause", "Pause", ["running"]],
  ["resume", "Resume", ["paused"]],
  ["stop", "Stop", ["running", "paused"]],
];

export function sandboxPage(main, id, tab) {
  const title = h("h1", {}, "Sandbox");
  const status = h("span", { id: "sandbox-status" });
  const verbs = h("div", { class: "row", role: "group", "aria-label": "Actions" });
  const panel = h("section", { id: "tab-panel", role: "tabpanel", tabindex: "0" });
  const problem = h("div");
  let row = null;
  let stopped = false;
  let timer = null;
  const current = TABS.find(([key]) => key === tab) || TABS[0];
  const tabs = h("div", { role: "tablist", class: "tabs", "aria-label": "Sandbox" },
    TABS.map(([key, label]) => h("button", {
      role: "tab", id: `tab-${key}`, "aria-selected": key === current[0] ? "true" : "false",
      tabindex: key === current[0] ? "0" : "-1",
      onclick: () => { location.hash = `#/sandboxes/${id}/${key}`; },
      onkeydown: (e) => {
        const i = TABS.findIndex(([k]) => k === key);
        const next = e.key === "ArrowRight" ? i + 1 : e.key === "ArrowLeft" ? i - 1 : null;
        if (next === null) return;
        const target = TABS[(next + TABS.length) % TABS.length][0];
        location.hash = `#/sandboxes/${id}/${target}`;
      },
    }, label)));

  async function act(verb, label) {
    if (verb === "delete" || verb === "stop") {
      const q = verb === "delete" ? `Delete sandbox "${row.name}" and everything in it?` : `Stop sandbox "${row.name}"? Its processes end.`;
      if (!(await confirmDialog(q, label))) return;
    }
    try {
      if (verb === "delete") {
        await api("DELETE", `/sandboxes/${id}`);
        toast(`Sandbox ${row.name} deleted`);
        location.hash = "#/sandboxes";
        return;
      }
      const res = await post(`/sandboxes/${id}/${verb}`);
      toast(res.message || `${label}: done`);
      refresh(false);
    } catch (err) {
      toast(errorBox(err).textContent, "error");
    }
  }

  function render() {
    clear(title, row.name);
    clear(status, statusBadge(row.status));
    clear(verbs,
      VERBS.filter(([, , from]) => from.includes(row.status)).map(([verb, label]) =>
        h("button", { class: "secondary", onclick: () => act(verb, label) }, label)),
      h("button", { class: "danger", onclick: () => act("delete", "Delete") }, "Delete"));
  }

  async function refresh(again = true) {
    try {
      const res = await get(`/sandboxes/${id}`);
      if (stopped) return;
      const changed = !row || row.status !== res.data.status;
      row = res.data;
      clear(problem);
      if (changed) render();
      if (changed && !leaveTab) leaveTab = Promise.resolve(current[2](panel, row, id)).catch((err) => { clear(panel, errorBox(err)); return () => {}; });
      else if (changed) leaveTab.then((tab) => typeof tab.statusChanged === "function" && tab.statusChanged(row));
    } catch (err) {
      if (!stopped) clear(problem, errorBox(err));
    }
    if (again && !stopped) timer = setTimeout(refresh, REFRESH_MS);
  }

  let leaveTab = null;
  clear(main,
    h("p", {}, h("a", { href: "#/sandboxes" }, "← Sandboxes")),
    h("div", { class: "row head" }, title, status), verbs, problem, tabs, panel);
  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (leaveTab) leaveTab.then((tab) => tab());
  };
}

function overviewTab(panel, row) {
  const facts = [
    ["ID", row.id], ["Image", row.image], ["Isolation", row.isolation || ""], ["CPU", row.cpu],
    ["Memory", `${row.mem} MiB`], ["Disk", row.diskMB ? `${row.diskMB} MiB` : ""],
    ["Auto-sleep", row.autoSleep ? "on" : "off"], ["Created", `${row.createdAt} (${age(row.createdAt)} ago)`],
    ["Labels", Object.entries(row.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "none"],
    ["Ports", (row.ports || []).map((p) => `${p.port}/${p.protocol}`).join(", ") || "none"],
    ["Internet", row.network && row.network.allowInternetAccess === false ? "blocked" : "default"],
  ];
  if (row.error) facts.push(["Error", row.error]);
  clear(panel, h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])));
  return () => {};
}
