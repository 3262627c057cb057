// Where the page keeps a login (broker user name and password or token): in memory only, unless the person
// ticks "remember me", which puts it in the browser's localStorage for this origin. That is a risk they take
// knowingly: any script running on this origin and anyone with access to this browser profile can read it, in
// clear. Never in the URL (it would end up in history, logs and Referer headers). Pure over a Storage.

/** The localStorage key of a remembered login. */
export const STORAGE_KEY = "mqtt-video.login";

/** The remembered login {username, password} in `storage`, or null. */
export function rememberedLogin(storage) {
  let value = null;
  try {
    value = JSON.parse(storage?.getItem(STORAGE_KEY) ?? "null");
  } catch {
    return null;
  }
  if (!value || typeof value.username !== "string" || !value.username.length) return null;
  return { username: value.username, password: typeof value.password === "string" ? value.password : "" };
}

/** Keeps `login` in `storage` when `remember`, else forgets any login kept there. */
export function keepLogin(storage, login, remember) {
  if (!storage) return;
  if (remember && login?.username) {
    storage.setItem(STORAGE_KEY, JSON.stringify({ username: login.username, password: login.password ?? "" }));
  } else {
    storage.removeItem(STORAGE_KEY);
  }
}
