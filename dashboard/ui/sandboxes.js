// The sandbox list: one page at a time from the server (labels filter server-side), refreshed
// every few seconds without reload; and the create form.
import { get, post } from "./api.js";
import { age, clear, errorBox, h, toast } from "./dom.js";

const REFRESH_MS = 3000;
const STATUSES = ["", "running", "paused", "stopped", "error", "killed"];

export function statusBadge(status) {
  return h("span", { class: `status s-${status}`, "data-status": status }, status);
}

function labelText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
}

export function sandboxesPage(main) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const state = { page: Number(params.get("page")) || 1, limit: 50, labels: params.get("labels") || "", status: params.get("status") || "" };
  const body = h("div", { "aria-live": "polite" });
  const pager = h("nav", { class: "row pager", "aria-label": "Pages" });
  const labels = h("input", { id: "f-labels", value: state.labels, placeholder: "team=ml,env=dev" });
  const status = h("select", { id: "f-status" }, STATUSES.map((s) => h("option", { value: s, selected: s === state.status }, s || "any")));
  let timer = null;
  let stopped = false;

  async function load() {
    try {
      const res = await get("/sandboxes", { page: state.page, limit: state.limit, labels: state.labels, status: state.status });
      if (stopped) return;
      render(res.data || [], res.meta || {});
    } catch (err) {
      if (!stopped) clear(body, errorBox(err));
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }

  function render(rows, meta) {
    if (!meta.total) {
      clear(body, h("div", { class: "empty" },
        h("p", {}, state.labels || state.status ? "No sandbox matches these filters." : "No sandboxes yet."),
        h("p", {}, "Create one with the form below, or from code: ", h("code", {}, "Sandbox.create(name=\"dev\")"), ".")));
    } else {
      clear(body, h("div", { class: "scroll" }, h("table", { class: "sandboxes" },
        h("caption", { class: "muted" }, `${meta.total} sandboxes, page ${meta.page} of ${meta.totalPages}` + (state.status ? ` (${state.status})` : "")),
        h("thead", {}, h("tr", {}, ["Name", "Status", "Image", "CPU", "Memory", "Disk", "Labels", "Age", "Idle"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, rows.map((s) => h("tr", { "data-id": s.id },
          h("td", {}, h("a", { href: `#/sandboxes/${s.id}` }, s.name)),
          h("td", {}, statusBadge(s.status)),
          h("td", {}, s.image),
          h("td", {}, s.cpu),
          h("td", {}, `${s.mem} MiB`),
          h("td", {}, s.diskMB ? `${s.diskMB} MiB` : ""),
          h("td", {}, labelText(s.labels)),
          h("td", {}, age(s.createdAt)),
          h("td", {}, s.lastActivityAt ? age(s.lastActivityAt) : "")))))));
    }
    clear(pager,
      h("button", { class: "secondary", disabled: state.page <= 1, onclick: () => go(state.page - 1) }, "Previous"),
      h("span", {}, `Page ${meta.page || 1} / ${meta.totalPages || 1}`),
      h("button", { class: "secondary", disabled: state.page >= (meta.totalPages || 1), onclick: () => go(state.page + 1) }, "Next"));
  }

  function go(page) {
    state.page = page;
    clearTimeout(timer);
    load();
  }

  const filters = h("form", {
    class: "row", "aria-label": "Filter sandboxes",
    onsubmit: (e) => { e.preventDefault(); state.labels = labels.value.trim(); state.status = status.value; go(1); },
  }, h("label", { for: "f-status" }, "Status"), status, h("label", { for: "f-labels" }, "Labels"), labels, h("button", { type: "submit", class: "secondary" }, "Filter"));

  clear(main, h("h1", {}, "Sandboxes"), filters, body, pager, createForm(() => go(1)));
  load();
  return () => { stopped = true; clearTimeout(timer); };
}

function pairs(text, sep = "=") {
  const out = {};
  for (const part of text.split(/[,\n]/).map((p) => p.trim()).filter(Boolean)) {
    const i = part.indexOf(sep);
    if (i < 1) throw new Error(`"${part}" is not key${sep}value`);
    out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

function createForm(created) {
  const f = {
    name: h("input", { id: "c-name", required: true, placeholder: "dev", autocomplete: "off" }),
    image: h("input", { id: "c-image", placeholder: "code" }),
    cpu: h("input", { id: "c-cpu", type: "number", min: 1, max: 8, placeholder: "1" }),
    mem: h("input", { id: "c-mem", type: "number", min: 1024, max: 16384, step: 256, placeholder: "1024" }),
    env: h("textarea", { id: "c-env", rows: 2, placeholder: "KEY=value, one per line" }),
    labels: h("input", { id: "c-labels", placeholder: "team=ml,env=dev" }),
    ports: h("input", { id: "c-ports", placeholder: "3000,8080" }),
    internet: h("input", { id: "c-internet", type: "checkbox", checked: true }),
  };
  const out = h("div", { "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Create sandbox");
  const form = h("form", {
    class: "card grid", "aria-label": "Create sandbox",
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        const body = { name: f.name.value.trim() };
        if (f.image.value.trim()) body.image = f.image.value.trim();
        if (f.cpu.value) body.cpu = Number(f.cpu.value);
        if (f.mem.value) body.mem = Number(f.mem.value);
        if (f.env.value.trim()) body.envVars = pairs(f.env.value);
        if (f.labels.value.trim()) body.labels = pairs(f.labels.value);
        if (f.ports.value.trim()) body.ports = f.ports.value.split(",").map((p) => ({ protocol: "http", port: Number(p.trim()) }));
        if (!f.internet.checked) body.network = { allowInternetAccess: false };
        submit.disabled = true;
        clear(out, h("p", { class: "muted" }, "Creating…"));
        const res = await post("/sandboxes", body);
        clear(out, h("p", {}, "Created ", h("a", { href: `#/sandboxes/${res.data.id}` }, res.data.name), "."));
        toast(`Sandbox ${res.data.name} created`);
        f.name.value = "";
        created();
      } catch (err) {
        clear(out, errorBox(err));
      } finally {
        submit.disabled = false;
      }
    },
  },
  h("h2", {}, "New sandbox"),
  h("label", { for: "c-name" }, "Name"), f.name,
  h("label", { for: "c-image" }, "Image"), f.image,
  h("label", { for: "c-cpu" }, "CPU cores"), f.cpu,
  h("label", { for: "c-mem" }, "Memory (MiB)"), f.mem,
  h("label", { for: "c-env" }, "Environment"), f.env,
  h("label", { for: "c-labels" }, "Labels"), f.labels,
  h("label", { for: "c-ports" }, "HTTP ports"), f.ports,
  h("label", { for: "c-internet" }, "Internet access"), f.internet,
  submit, out);
  return form;
}
