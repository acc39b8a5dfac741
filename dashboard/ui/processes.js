// The Processes tab: background commands (commands/run), their output (commands/attach, SSE
// read from a fetch stream), and kill.
import { get, post, postEvents } from "./api.js";
import { age, clear, confirmDialog, errorBox, h, toast } from "./dom.js";

const REFRESH_MS = 3000;

export function processesTab(panel, row, id) {
  const list = h("div", { "aria-live": "polite" });
  const output = h("pre", { class: "output", "aria-label": "Process output", tabindex: "0" });
  const outputTitle = h("h3", {}, "Output");
  const command = h("input", { id: "proc-command", required: true, placeholder: "python3 -m http.server 8000", autocomplete: "off" });
  let timer = null;
  let stopped = false;
  let following = null;

  async function load() {
    try {
      const res = await get(`/sandboxes/${id}/commands/list`);
      if (!stopped) render(res.processes || []);
    } catch (err) {
      if (!stopped) clear(list, errorBox(err));
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }

  function render(procs) {
    if (!procs.length) {
      clear(list, h("p", { class: "empty" }, "No background commands. Start one above; it keeps running after this page closes."));
      return;
    }
    clear(list, h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, ["PID", "Command", "State", "Started", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, procs.map((p) => h("tr", {},
        h("td", {}, p.pid),
        h("td", {}, h("code", {}, p.command)),
        h("td", {}, p.running ? "running" : `exited ${p.exitCode ?? ""}`),
        h("td", {}, `${age(p.startTime)} ago`),
        h("td", { class: "row" },
          h("button", { class: "secondary", "aria-label": `Output of ${p.pid}`, onclick: () => follow(p) }, "Output"),
          p.running ? h("button", { class: "danger", "aria-label": `Kill ${p.pid}`, onclick: () => kill(p) }, "Kill") : "")))))));
  }

  async function follow(p) {
    if (following) following.abort();
    following = new AbortController();
    clear(outputTitle, `Output of ${p.pid}: ${p.command}`);
    output.textContent = "";
    try {
      await postEvents(`/sandboxes/${id}/commands/attach`, { pid: p.pid }, (name, data) => {
        if (name === "stdout" || name === "stderr") output.textContent += `${data}\n`;
        else if (name === "exit") output.textContent += `[exit ${JSON.parse(data).exitCode}]\n`;
        else if (name === "error") output.textContent += `[error ${data}]\n`;
        output.scrollTop = output.scrollHeight;
      }, following.signal);
    } catch (err) {
      if (err.name !== "AbortError") output.textContent += `[${errorBox(err).textContent}]\n`;
    }
  }

  async function kill(p) {
    if (!(await confirmDialog(`Kill process ${p.pid} (${p.command})?`, "Kill"))) return;
    try { await post(`/sandboxes/${id}/commands/kill`, { pid: p.pid }); toast(`Killed ${p.pid}`); } catch (err) { toast(errorBox(err).textContent, "error"); }
  }

  clear(panel,
    h("form", {
      class: "row", "aria-label": "Run a background command",
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          const res = await post(`/sandboxes/${id}/commands/run`, { command: command.value });
          toast(`Started pid ${res.pid}`);
          command.value = "";
          clearTimeout(timer);
          load();
          follow({ pid: res.pid, command: res.command });
        } catch (err) { toast(errorBox(err).textContent, "error"); }
      },
    }, h("label", { for: "proc-command" }, "Command"), command, h("button", { type: "submit" }, "Run in background")),
    list, outputTitle, output);
  load();
  return () => { stopped = true; clearTimeout(timer); if (following) following.abort(); };
}
