// What both pages share: the error box, and JSON requests that carry a token, asked for once per tab
// when the service answers 401.  Each page keeps its own token: a person's, or the operator's admin token.
"use strict";

const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function makeApi(tokenKey, question) {
  let asking = null;

  function askForToken() {
    asking ??= Promise.resolve().then(() => {
      const token = (window.prompt(question) || "").trim();
      if (token) sessionStorage.setItem(tokenKey, token);
      asking = null;
      return token;
    });
    return asking;
  }

  async function send(method, path, body) {
    const options = { method, headers: {} };
    const token = sessionStorage.getItem(tokenKey);
    if (token) options.headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    return fetch(path, options);
  }

  return async function api(method, path, body) {
    let response;
    try {
      const sent = sessionStorage.getItem(tokenKey);
      response = await send(method, path, body);
      if (response.status === 401) {
        // Another request may have asked for the token meanwhile: use it rather than asking again.
        const current = sessionStorage.getItem(tokenKey);
        if (current && current !== sent) {
          response = await send(method, path, body);
        } else {
          sessionStorage.removeItem(tokenKey);
          if (await askForToken()) response = await send(method, path, body);
        }
      }
    } catch (err) {
      showError(`The service did not answer: ${err.message}`);
      throw err;
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const message = data && data.error ? data.error : `${response.status} ${response.statusText}`;
      showError(message);
      throw new Error(message);
    }
    return data;  // an error stays until the next action starts: a later success must not hide it
  };
}
