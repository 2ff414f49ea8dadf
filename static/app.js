// The page talks only to the JSON API; every error the API returns is shown to the person.
"use strict";

const api = makeApi("recommender-user-token",
  "This service needs your user token (from its operator) to show and save your ratings:");
const scale = {
  low: Number(document.body.dataset.low),
  high: Number(document.body.dataset.high),
  step: Number(document.body.dataset.step),
};

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function user() {
  return $("user").value.trim();
}

function ratingOptions() {
  const values = [];
  for (let v = scale.high; v >= scale.low - 1e-9; v -= scale.step) values.push(Math.round(v * 10) / 10);
  return values;
}

function movieLink(movie) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "movie-link";
  button.textContent = movie.title;
  button.addEventListener("click", () => showMovie(movie.movieId).catch(() => {}));
  return button;
}

function meta(text) {
  const span = document.createElement("span");
  span.className = "meta";
  span.textContent = ` ${text}`;
  return span;
}

function renderResults(query, movies) {
  const list = $("results");
  list.replaceChildren();
  list.dataset.query = query;
  if (!movies.length) {
    list.append(Object.assign(document.createElement("li"), { textContent: "No movie matches." }));
  }
  for (const movie of movies) {
    const item = document.createElement("li");
    item.dataset.movieId = movie.movieId;
    const select = document.createElement("select");
    select.className = "stars";
    for (const value of ratingOptions()) {
      select.append(new Option(`${value} ★`, value, value === 4, value === 4));
    }
    const rate = document.createElement("button");
    rate.type = "button";
    rate.className = "rate";
    rate.textContent = "Rate";
    rate.addEventListener("click", () => rateMovie(movie.movieId, Number(select.value), item).catch(() => {}));
    const title = Object.assign(document.createElement("div"), { className: "title" });
    title.append(movieLink(movie), meta(`(${plural(movie.ratings_count, "rating")})`));
    const saved = Object.assign(document.createElement("span"), { className: "saved" });
    item.append(title, select, rate, saved);
    list.append(item);
  }
}

async function search(event) {
  if (event) event.preventDefault();
  showError("");
  const q = $("search").value.trim();
  if (!q) return;
  const data = await api("GET", `/movies?q=${encodeURIComponent(q)}&limit=20`);
  renderResults(q, data.movies);
}

async function rateMovie(movieId, rating, item) {
  showError("");
  await api("POST", `/${encodeURIComponent(user())}/ratings`, [{ movieId, rating }]);
  const mark = item.querySelector(".saved");
  mark.textContent = `saved ${rating} ★`;
  mark.dataset.saved = rating;
  await Promise.all([loadRated(), loadRecommendations(false)]);
}

const RATED_SHOWN = 5;  // the user's own ratings collapse to this many, with "show all"

async function loadRated() {
  const data = await api("GET", `/${encodeURIComponent(user())}/ratings`);
  const list = $("rated");
  list.replaceChildren();
  data.ratings.forEach((movie, i) => {
    const item = document.createElement("li");
    item.dataset.movieId = movie.movieId;
    item.hidden = i >= RATED_SHOWN && !list.classList.contains("expanded");
    item.append(movieLink(movie), meta(`${movie.rating} ★`));
    list.append(item);
  });
  const more = $("rated-more");
  more.hidden = data.ratings.length <= RATED_SHOWN;
  more.textContent = list.classList.contains("expanded") ? "show fewer" : `show all ${data.ratings.length}`;
}

async function loadRecommendations(event) {
  if (event) event.preventDefault();
  if (event !== false) showError("");  // false: part of an action that cleared it already
  const params = new URLSearchParams({ min_count: $("min-count").value });
  if ($("genre").value) params.set("genre", $("genre").value);
  const count = encodeURIComponent($("count").value);
  const data = await api("GET", `/${encodeURIComponent(user())}/ratings/top/${count}?${params}`);
  $("fallback").hidden = data.fallback !== "popular";
  $("empty-reason").hidden = !data.reason;  // an empty list says why (a filter no movie passes)
  $("empty-reason").textContent = data.reason ? `Nothing to show: ${data.reason}.` : "";
  const list = $("recommendations");
  list.replaceChildren();
  list.dataset.minCount = data.min_count;  // which filter the list shows (tests wait on it)
  for (const movie of data.movies) {
    const item = document.createElement("li");
    item.dataset.movieId = movie.movieId;
    item.dataset.ratingsCount = movie.ratings_count;
    item.append(movieLink(movie),
      meta(`predicted ${movie.predicted_rating.toFixed(2)} ★ · ${plural(movie.ratings_count, "rating")} · ` +
        movie.genres.join(", ")));
    list.append(item);
  }
  loadStatus().catch(() => {});
}

async function loadStatus() {
  const health = await api("GET", "/health");
  const when = health.trained_at.replace("T", " ").replace("Z", " UTC");
  const waiting = health.pending_ratings
    ? `${plural(health.pending_ratings, "new rating")} wait for the next retrain`
    : "every rating is in the model";
  $("status").textContent =
    `Model version ${health.model_version}, trained ${when}; ${waiting}` +
    (health.training ? " (retraining now)" : "") + ".";
}

async function showMovie(movieId) {
  showError("");
  const [prediction, similar] = await Promise.all([
    api("GET", `/${encodeURIComponent(user())}/ratings/${movieId}`),
    api("GET", `/movies/${movieId}/similar?count=8`),
  ]);
  const detail = $("detail");
  if (!detail.open) detail.showModal();  // in the middle of the screen, wherever the list was clicked
  $("detail-title").textContent = prediction.title;
  const own = prediction.user_rating === null ? "not rated by you" : `you rated it ${prediction.user_rating} ★`;
  $("detail-info").textContent =
    `Predicted for you: ${prediction.predicted_rating.toFixed(2)} ★ · ${plural(prediction.ratings_count, "rating")} · ` +
    `${prediction.genres.join(", ")} · ${own}`;
  const list = $("similar");
  list.replaceChildren();
  for (const movie of similar.similar) {
    const item = document.createElement("li");
    item.append(movieLink(movie), meta(`similarity ${movie.similarity.toFixed(2)}`));
    list.append(item);
  }
}

const USER_KEY = "recommender-user";  // who this browser is, remembered across visits

function chooseUser(id) {
  $("user").value = id;
  if (/^\d+$/.test(String(id))) localStorage.setItem(USER_KEY, id);
  $("start").hidden = true;
  document.querySelector("main").hidden = false;
  refresh();
}

async function newUser() {
  const data = await api("POST", "/users");  // the next id nobody has
  chooseUser(data.user);
}

function clearLists() {
  // A user whose lists cannot be loaded (a bad id, a token for someone else) shows nobody's lists.
  for (const id of ["rated", "recommendations"]) $(id).replaceChildren();
  for (const id of ["fallback", "empty-reason", "rated-more"]) $(id).hidden = true;
  delete $("recommendations").dataset.minCount;
}

function refresh() {
  showError("");
  Promise.all([loadRated(), loadRecommendations(false)]).catch(clearLists);
}

function toggleRated() {
  const list = $("rated");
  list.classList.toggle("expanded");
  loadRated().catch(() => {});
}

$("search-form").addEventListener("submit", (e) => search(e).catch(() => {}));
$("filters").addEventListener("submit", (e) => loadRecommendations(e).catch(() => {}));
$("min-count").addEventListener("change", () => loadRecommendations().catch(() => {}));
$("genre").addEventListener("change", () => loadRecommendations().catch(() => {}));
$("user").addEventListener("change", () => chooseUser(user()));
$("new-user").addEventListener("click", () => newUser().catch(() => {}));
$("rated-more").addEventListener("click", toggleRated);
$("detail-close").addEventListener("click", () => $("detail").close());
const remembered = localStorage.getItem(USER_KEY);
if (remembered) chooseUser(remembered);  // otherwise the start screen asks who you are
