// Draws each target's delivered/s and failed/s over the last minutes with
// uPlot, from the row's data-series: [[unix seconds...], [delivered/s...], [failed/s...]].
document.querySelectorAll(".chart[data-series]").forEach(function (el) {
  var data = JSON.parse(el.dataset.series);
  new uPlot({
    width: 220,
    height: 48,
    legend: { show: false },
    cursor: { show: false },
    scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(1, max)]; } } },
    axes: [{ show: false }, { show: false }],
    series: [
      {},
      { label: "delivered/s", stroke: "#2f9e44", width: 1.5, fill: "rgba(47,158,68,0.12)" },
      { label: "failed/s", stroke: "#c92a2a", width: 1.5 }
    ]
  }, data, el);
  el.title = "delivered/s (green) and failed/s (red), last " + Math.round((data[0][data[0].length - 1] - data[0][0]) / 60 + 1 / 6) + " min";
});
