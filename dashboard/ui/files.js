// The Files tab: browse, upload (button or drag and drop, with progress), download, create
// folder, rename, delete, and view/edit small text files.
import { api, get, post, upload } from "./api.js";
import { bytes, clear, confirmDialog, errorBox, h, toast } from "./dom.js";

const EDIT_MAX = 1024 * 1024;

function join(dir, name) {
  return `${dir.replace(/\/+$/, "")}/${name}`;
}

function parent(path) {
  const cut = path.replace(/\/+$/, "").lastIndexOf("/");
  return cut <= 0 ? "/" : path.slice(0, cut);
}

// File ops answer 200 with the command's exit code; a non-zero one is a failure to show.
function checked(res) {
  const d = res && res.data;
  if (d && d.exitCode) throw new Error(d.stderr || `exit code ${d.exitCode}`);
  return res;
}

export function filesTab(panel, row, id) {
  let dir = sessionStorage.getItem(`voidrun-files-${id}`) || "/root";
  const where = h("input", { id: "files-path", value: dir, "aria-label": "Folder" });
  const list = h("div", { class: "drop", "aria-live": "polite" });
  const progress = h("div");
  const editor = h("div");
  const picker = h("input", { type: "file", multiple: true, id: "files-upload", class: "visually-hidden", onchange: () => send([...picker.files]) });

  async function load(to = dir) {
    try {
      const res = await get(`/sandboxes/${id}/files`, { path: to });
      dir = to;
      where.value = dir;
      sessionStorage.setItem(`voidrun-files-${id}`, dir);
      render(res.data.files || []);
    } catch (err) { clear(list, errorBox(err)); }
  }

  function render(files) {
    if (!files.length) {
      clear(list, h("p", { class: "empty" }, "This folder is empty. Drop files here or use Upload."));
      return;
    }
    clear(list, h("div", { class: "scroll" }, h("table", { class: "files" },
      h("thead", {}, h("tr", {}, ["Name", "Size", "Mode", "Modified", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, files.map((f) => h("tr", { "data-name": f.name },
        h("td", {}, f.isDir
          ? h("button", { class: "link", onclick: () => load(f.path) }, `${f.name}/`)
          : h("span", {}, f.name)),
        h("td", {}, f.isDir ? "" : bytes(f.size)),
        h("td", {}, h("code", {}, f.mode)),
        h("td", {}, new Date(f.modTime).toLocaleString()),
        h("td", { class: "row" },
          f.isDir ? "" : h("a", { class: "button secondary", href: `/api/sandboxes/${id}/files/download?path=${encodeURIComponent(f.path)}`, download: f.name, "aria-label": `Download ${f.name}` }, "Download"),
          f.isDir || f.size > EDIT_MAX ? "" : h("button", { class: "secondary", "aria-label": `Edit ${f.name}`, onclick: () => edit(f.path) }, "Edit"),
          h("button", { class: "secondary", "aria-label": `Rename ${f.name}`, onclick: () => rename(f) }, "Rename"),
          h("button", { class: "danger", "aria-label": `Delete ${f.name}`, onclick: () => remove(f) }, "Delete"))))))));
  }

  async function send(files) {
    for (const file of files) {
      const bar = h("progress", { max: 1, value: 0, "aria-label": `Uploading ${file.name}` });
      const item = h("div", { class: "row" }, h("span", {}, file.name), bar);
      progress.append(item);
      try {
        await upload(id, join(dir, file.name), file, (p) => { bar.value = p; });
        toast(`Uploaded ${file.name}`);
      } catch (err) {
        toast(`${file.name}: ${errorBox(err).textContent}`, "error");
      }
      item.remove();
    }
    picker.value = "";
    load();
  }

  async function rename(f) {
    const to = prompt(`Rename ${f.name} to`, f.name);
    if (!to || to === f.name) return;
    try { checked(await post(`/sandboxes/${id}/files/move`, undefined, { from: f.path, to: join(dir, to) })); load(); } catch (err) { toast(errorBox(err).textContent, "error"); }
  }

  async function remove(f) {
    if (!(await confirmDialog(`Delete ${f.path}${f.isDir ? " and everything in it" : ""}?`, "Delete"))) return;
    try { checked(await api("DELETE", `/sandboxes/${id}/files`, { query: { path: f.path } })); load(); } catch (err) { toast(errorBox(err).textContent, "error"); }
  }

  async function mkdir() {
    const name = prompt("New folder name");
    if (!name) return;
    try { checked(await post(`/sandboxes/${id}/files/mkdir`, undefined, { path: join(dir, name) })); load(); } catch (err) { toast(errorBox(err).textContent, "error"); }
  }

  async function edit(path) {
    try {
      const response = await fetch(`/api/sandboxes/${id}/files/download?path=${encodeURIComponent(path)}`, { credentials: "same-origin" });
      if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error || `HTTP ${response.status}`);
      const text = new TextDecoder("utf-8", { fatal: true }).decode(await response.arrayBuffer());
      const area = h("textarea", { id: "editor", rows: 16, spellcheck: "false", "aria-label": `Contents of ${path}` });
      area.value = text;
      clear(editor, h("div", { class: "card" },
        h("h3", {}, path), area,
        h("div", { class: "row" },
          h("button", {
            onclick: async () => {
              try { await upload(id, path, new Blob([area.value]), () => {}); toast(`Saved ${path}`); clear(editor); load(); } catch (err) { toast(errorBox(err).textContent, "error"); }
            },
          }, "Save"),
          h("button", { class: "secondary", onclick: () => clear(editor) }, "Close"))));
      area.focus();
    } catch (err) {
      toast(err instanceof TypeError ? `${path} is not UTF-8 text` : errorBox(err).textContent, "error");
    }
  }

  list.addEventListener("dragover", (e) => { e.preventDefault(); list.classList.add("over"); });
  list.addEventListener("dragleave", () => list.classList.remove("over"));
  list.addEventListener("drop", (e) => { e.preventDefault(); list.classList.remove("over"); send([...e.dataTransfer.files]); });

  clear(panel,
    h("form", { class: "row", "aria-label": "Go to folder", onsubmit: (e) => { e.preventDefault(); load(where.value.trim() || "/"); } },
      h("button", { type: "button", class: "secondary", onclick: () => load(parent(dir)) }, "Up"),
      where, h("button", { type: "submit", class: "secondary" }, "Go"),
      h("button", { type: "button", class: "secondary", onclick: mkdir }, "New folder"),
      h("label", { for: "files-upload", class: "button", tabindex: "0", onkeydown: (e) => (e.key === "Enter" || e.key === " ") && picker.click() }, "Upload"), picker,
      h("button", { type: "button", class: "secondary", onclick: () => load() }, "Refresh")),
    progress, editor, list);
  load();
  return () => {};
}
