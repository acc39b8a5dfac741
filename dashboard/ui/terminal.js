// The Terminal tab: xterm.js over a persistent PTY session's WebSocket. The session survives
// disconnects: its id is kept for this tab (sessionStorage), and a dropped socket reattaches
// (scrollback first). Resize goes through POST …/resize; copy with Ctrl+Shift+C or the button.
import { Terminal } from "/ui/vendor/xterm.mjs";
import { FitAddon } from "/ui/vendor/addon-fit.mjs";
import { api, get, post } from "./api.js";
import { clear, errorBox, h, stylesheet, toast } from "./dom.js";

stylesheet("/ui/vendor/xterm.css");

const RETRIES = 5;

export function terminalTab(panel, row, id) {
  const storeKey = `voidrun-terminal-${id}`;
  const state = h("span", { class: "muted", "aria-live": "polite" }, "Connecting…");
  const screen = h("div", { class: "term-box", "aria-label": "Terminal" });
  const problem = h("div");
  const term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000, fontSize: 14 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  let ws = null;
  let sessionId = sessionStorage.getItem(storeKey);
  let closed = false;
  let retries = 0;
  let resizeTimer = null;

  const copy = async () => {
    const text = term.getSelection();
    if (text) { await navigator.clipboard.writeText(text).catch(() => {}); toast("Copied"); }
  };
  const paste = async () => {
    const text = await navigator.clipboard.readText().catch(() => "");
    if (text) term.paste(text);
  };
  term.attachCustomKeyEventHandler((e) => {
    if (e.type === "keydown" && e.ctrlKey && e.shiftKey && e.code === "KeyC") { copy(); return false; }
    return true;
  });

  async function session() {
    if (sessionId) {
      const res = await get(`/sandboxes/${id}/pty/sessions`);
      const found = (res.data.sessions || []).find((s) => s.id === sessionId && s.alive);
      if (found) return sessionId;
    }
    const res = await post(`/sandboxes/${id}/pty/sessions`, { cols: term.cols, rows: term.rows });
    sessionId = res.data.sessionId;
    sessionStorage.setItem(storeKey, sessionId);
    return sessionId;
  }

  async function connect() {
    clear(problem);
    state.textContent = "Connecting…";
    let sid;
    try { sid = await session(); } catch (err) { clear(problem, errorBox(err)); state.textContent = "Not connected"; return; }
    if (closed) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${scheme}://${location.host}/api/sandboxes/${id}/pty/sessions/${sid}`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { retries = 0; state.textContent = `Connected (session ${sid.slice(0, 8)})`; resize(); term.focus(); };
    ws.onmessage = (e) => term.write(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
    ws.onclose = () => {
      if (closed) return;
      state.textContent = "Disconnected";
      if (retries < RETRIES) { retries += 1; setTimeout(() => !closed && connect(), 1000 * retries); }
    };
  }

  function resize() {
    try { fit.fit(); } catch { return; }
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      if (sessionId && ws && ws.readyState === WebSocket.OPEN) {
        post(`/sandboxes/${id}/pty/sessions/${sessionId}/resize`, { cols: term.cols, rows: term.rows }).catch(() => {});
      }
    }, 200);
  }

  term.onData((data) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(data); });
  const observer = new ResizeObserver(() => resize());

  clear(panel,
    h("div", { class: "row" }, state,
      h("button", { class: "secondary", onclick: () => { if (ws) ws.close(); retries = 0; connect(); } }, "Reconnect"),
      h("button", { class: "secondary", onclick: copy }, "Copy selection"),
      h("button", { class: "secondary", onclick: paste }, "Paste"),
      h("button", {
        class: "secondary",
        onclick: async () => {
          const old = sessionId;
          sessionId = null;
          sessionStorage.removeItem(storeKey);
          if (ws) { ws.onclose = null; ws.close(); }
          if (old) await api("DELETE", `/sandboxes/${id}/pty/sessions/${old}`).catch(() => {});
          term.reset();
          connect();
        },
      }, "New session")),
    problem, screen);
  term.open(screen);
  observer.observe(screen);
  fit.fit();
  connect();
  return () => {
    closed = true;
    observer.disconnect();
    if (ws) ws.close();
    term.dispose();
  };
}
