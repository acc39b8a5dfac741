// The dashboard: sign-in, then a hash router over the pages (#/sandboxes, #/sandboxes/<id>/<tab>,
// #/keys, #/users, #/images). Each page returns a cleanup function run when it is left.
import { onSignedOut, restore, signIn, signOut } from "./api.js";
import { clear, errorBox, h } from "./dom.js";
import { imagesPage, keysPage, usersPage } from "./accounts.js";
import { sandboxesPage } from "./sandboxes.js";
import { sandboxPage } from "./sandbox.js";

const main = document.getElementById("main");
const top = document.getElementById("top");
let leave = () => {};
let session = null;

const NAV = [
  ["#/sandboxes", "Sandboxes"],
  ["#/keys", "API keys"],
  ["#/users", "Users"],
  ["#/images", "Images"],
];

function header() {
  if (!session) return clear(top, h("span", { class: "brand" }, "VoidRun"));
  const here = location.hash || "#/sandboxes";
  return clear(top,
    h("a", { class: "brand", href: "#/sandboxes" }, "VoidRun"),
    h("nav", { "aria-label": "Main" },
      NAV.map(([href, label]) => h("a", { href, "aria-current": here.startsWith(href) ? "page" : false }, label))),
    h("button", { class: "secondary", onclick: async () => { await signOut().catch(() => {}); session = null; route(); } }, "Sign out"));
}

function loginPage() {
  let error = h("div");
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const form = h("form", {
    class: "card login", "aria-label": "Sign in",
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        session = await signIn(input.value.trim());
        input.value = "";
        if (!location.hash || location.hash === "#/login") location.hash = "#/sandboxes";
        else route();
      } catch (err) {
        error.replaceWith(error = errorBox(err));
        input.select();
      }
    },
  },
  h("h1", {}, "Sign in"),
  h("label", { for: "api-key" }, "API key"),
  input,
  h("p", { class: "muted" }, "The key is exchanged for a session cookie; it is not stored in this browser. ",
    "No key yet? `make serve` prints one on first start (also in the data dir's bootstrap-key)."),
  error,
  h("button", { type: "submit" }, "Sign in"));
  clear(main, form);
  input.focus();
  return () => {};
}

function route() {
  leave();
  header();
  if (!session) { leave = loginPage(); return; }
  const parts = (location.hash.replace(/^#\/?/, "") || "sandboxes").split("/").map(decodeURIComponent);
  clear(main);
  if (parts[0] === "sandboxes" && parts[1]) leave = sandboxPage(main, parts[1], parts[2] || "overview");
  else if (parts[0] === "keys") leave = keysPage(main, session);
  else if (parts[0] === "users") leave = usersPage(main);
  else if (parts[0] === "images") leave = imagesPage(main);
  else leave = sandboxesPage(main);
  main.focus({ preventScroll: true });
}

onSignedOut.handler = () => { session = null; route(); };
window.addEventListener("hashchange", route);

(async () => {
  try { session = await restore(); } catch (err) { clear(main, errorBox(err)); return; }
  route();
})();
