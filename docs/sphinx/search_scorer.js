// The course site's search ranking (conf.py's html_search_scorer): Sphinx's own weights, and two rules on top.
// A page whose own title holds every word searched for comes first (a search for "masking" finds lesson 5, not
// the lessons that mention masks in passing), and a lesson comes before its exercise set.
var Scorer = {
  score: (result) => {
    const [docname, title, , , score] = result;
    const words = (new URLSearchParams(window.location.search).get("q") || "")
      .toLowerCase()
      .split(/\s+/)
      .filter((word) => word.length > 0);
    const pageTitle = (title || "").split(" > ")[0].toLowerCase();
    let total = score;
    if (words.length > 0 && words.every((word) => pageTitle.includes(word))) total += 20;
    if (docname.startsWith("notebooks/")) total += 2;
    return total;
  },
  objNameMatch: 11,
  objPartialMatch: 6,
  objPrio: { 0: 15, 1: 5, 2: -5 },
  objPrioDefault: 0,
  title: 15,
  partialTitle: 7,
  term: 5,
  partialTerm: 2,
};
