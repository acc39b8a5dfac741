// API keys, org users and images.
import { api, get, post } from "./api.js";
import { age, clear, confirmDialog, errorBox, h, toast } from "./dom.js";

function table(head, rows, empty) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("div", { class: "scroll" }, h("table", {},
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows)));
}

export function keysPage(main, session) {
  const list = h("div");
  const shown = h("div", { "aria-live": "polite" });
  const name = h("input", { id: "key-name", maxlength: 25, required: true, placeholder: "ci" });
  async function load() {
    try {
      const keys = await get("/orgs/apikeys");
      clear(list, table(["Name", "Key", "Status", "Created", "Last used", ""], keys.map((k) => h("tr", {},
        h("td", {}, k.keyName || k.name),
        h("td", {}, h("code", {}, k.maskedKey || k.apiKey || "")),
        h("td", {}, k.isActive === false ? "inactive" : "active"),
        h("td", {}, age(k.createdAt)),
        h("td", {}, k.lastUsedAt ? `${age(k.lastUsedAt)} ago` : "never"),
        h("td", {}, h("button", {
          class: "danger", "aria-label": `Revoke ${k.keyName || k.name}`,
          onclick: async () => {
            const self = (k.keyId || k.id) === session.keyId;
            const q = self ? "Revoke the key of this session? You will be signed out." : `Revoke key "${k.keyName || k.name}"? Clients using it stop working at once.`;
            if (!(await confirmDialog(q, "Revoke"))) return;
            try { await api("DELETE", `/orgs/apikeys/${k.keyId || k.id}`); toast("Key revoked"); load(); } catch (err) { toast(errorBox(err).textContent, "error"); }
          },
        }, "Revoke")))), "No API keys. Create one below."));
    } catch (err) { clear(list, errorBox(err)); }
  }
  const form = h("form", {
    class: "row", "aria-label": "Create API key",
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        const key = await post("/orgs/apikeys", { keyName: name.value.trim() });
        name.value = "";
        const plain = h("code", { class: "secret" }, key.plainKey);
        clear(shown, h("div", { class: "card notice" },
          h("p", {}, `New key "${key.keyName}": copy it now, it is not shown again.`), plain,
          h("button", { onclick: async () => { await navigator.clipboard.writeText(key.plainKey).catch(() => {}); toast("Copied"); } }, "Copy")));
        load();
      } catch (err) { clear(shown, errorBox(err)); }
    },
  }, h("label", { for: "key-name" }, "New key name"), name, h("button", { type: "submit" }, "Create key"));
  clear(main, h("h1", {}, "API keys"), form, shown, list);
  load();
  return () => {};
}

export function usersPage(main) {
  const list = h("div");
  clear(main, h("h1", {}, "Org users"), h("p", { class: "muted" }, "Members are added with `voidrun-server users add`."), list);
  get("/orgs/users").then((body) => clear(list, table(["Name", "Email", "Joined"], (body.data || []).map((u) => h("tr", {},
    h("td", {}, u.name), h("td", {}, u.email), h("td", {}, age(u.createdAt)))), "No users in this org.")))
    .catch((err) => clear(list, errorBox(err)));
  return () => {};
}

export function imagesPage(main) {
  const list = h("div");
  const out = h("div", { "aria-live": "polite" });
  const name = h("input", { id: "img-name", required: true, placeholder: "python" });
  const source = h("input", { id: "img-source", placeholder: "registry/repo:tag" });
  const path = h("input", { id: "img-path", placeholder: "/var/lib/voidrun/imports/x.tar" });
  let timer = null;
  async function load() {
    try {
      const images = await get("/images");
      clear(list, table(["Name", "Tag", "Status", "Size", "Created"], images.map((i) => h("tr", {},
        h("td", {}, i.name, i.system ? h("span", { class: "badge" }, "system") : ""),
        h("td", {}, i.tag || ""),
        h("td", {}, i.status === "building" && i.progress != null ? h("progress", { max: 1, value: i.progress, "aria-label": `import of ${i.name}` }) : (i.status || (i.active ? "ready" : "inactive")),
          i.error ? h("span", { class: "error" }, ` ${i.error}`) : ""),
        h("td", {}, i.sizeGB != null ? `${Number(i.sizeGB).toFixed(2)} GB` : ""),
        h("td", {}, age(i.createdAt)))), "No images yet. Build one with `voidrun-server images build code`, or import one below."));
    } catch (err) { clear(list, errorBox(err)); }
  }
  const form = h("form", {
    class: "grid", "aria-label": "Import image",
    onsubmit: async (e) => {
      e.preventDefault();
      const body = { name: name.value.trim() };
      if (source.value.trim()) body.source = source.value.trim();
      if (path.value.trim()) body.path = path.value.trim();
      try { await post("/images", body); toast("Import started"); load(); } catch (err) { clear(out, errorBox(err)); }
    },
  }, h("label", { for: "img-name" }, "Name"), name, h("label", { for: "img-source" }, "Registry reference"), source,
  h("label", { for: "img-path" }, "or host path"), path, h("button", { type: "submit" }, "Import"));
  clear(main, h("h1", {}, "Images"), list, h("h2", {}, "Import an image"), form, out);
  load();
  timer = setInterval(load, 3000);
  return () => clearInterval(timer);
}
