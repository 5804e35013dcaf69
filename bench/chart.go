package main

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// chart draws the main figures as horizontal bar panels (hand-written SVG).
func (r *results) chart() string {
	type bar struct {
		label string
		key   string
		color string
	}
	type panel struct {
		title string
		unit  string
		bars  []bar
	}
	const (
		cPg    = "#2b7bb9"
		cRecv  = "#7f7f7f"
		cCandi = "#d9822b"
		cNone  = "#4d9e4d"
	)
	panels := []panel{
		{"Backlog drain (events/s, higher is better)", "events/s", []bar{
			{"pg_recvlogical (raw decode)", "p1.recv", cRecv},
			{"pgcdc, SetMaxGoroutines(1)", "p1.g1", cPg},
			{"pgcdc, SetMaxGoroutines(4)", "p1.g4", cPg},
			{"pgcdc, SetMaxGoroutines(16)", "p1.g16", cPg},
			{"candi tuned (100k NOTIFY backlog)", "p1.candi", cCandi},
			{"candi defaults", "p1.candi_def", cCandi},
		}},
		{"Write TPS, 8 clients (higher is better)", "TPS", []bar{
			{"no capture", "p2.none", cNone},
			{"pgcdc live", "p2.pgcdc", cPg},
			{"pg_recvlogical live", "p2.recv", cRecv},
			{"candi live", "p2.candi", cCandi},
		}},
		{"Rows/s delivered end to end, 8 writers", "rows/s", []bar{
			{"pgcdc", "p3.pgcdc_e2e", cPg},
			{"candi", "p3.candi_e2e", cCandi},
		}},
		{"Commit → handler latency (ms, lower is better)", "ms", []bar{
			{"pgcdc 1k/s p50", "p5.1k_p50", cPg},
			{"pgcdc 1k/s p99", "p5.1k_p99", cPg},
			{"pgcdc 5k/s p50", "p5.5k_p50", cPg},
			{"pgcdc 5k/s p99", "p5.5k_p99", cPg},
			{"pgcdc quiet row", "p5.quiet", cPg},
			{"candi 1k/s p50", "p5.candi1k_p50", cCandi},
			{"candi 1k/s p99", "p5.candi1k_p99", cCandi},
		}},
	}
	const (
		width   = 900
		labelW  = 260
		barMaxW = 520
		barH    = 18
		gap     = 6
	)
	var b strings.Builder
	y := 20
	var body strings.Builder
	for _, p := range panels {
		var bars []bar
		maxV := 0.0
		for _, br := range p.bars {
			if m := r.m[br.key]; m != nil && !math.IsNaN(m.median()) {
				bars = append(bars, br)
				maxV = math.Max(maxV, math.Max(m.median(), maxOf(m.Vals)))
			}
		}
		if len(bars) == 0 || maxV <= 0 {
			continue
		}
		fmt.Fprintf(&body, `<text x="10" y="%d" font-weight="bold">%s</text>`+"\n", y+14, html.EscapeString(p.title))
		y += 24
		for _, br := range bars {
			m := r.m[br.key]
			v := m.median()
			w := v / maxV * barMaxW
			fmt.Fprintf(&body, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", labelW-8, y+barH-5, html.EscapeString(br.label))
			fmt.Fprintf(&body, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", labelW, y, w, barH, br.color)
			if len(m.Vals) > 1 { // spread whisker
				lo, hi := minOf(m.Vals)/maxV*barMaxW, maxOf(m.Vals)/maxV*barMaxW
				cy := y + barH/2
				fmt.Fprintf(&body, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#222" stroke-width="1.5"/>`+"\n", float64(labelW)+lo, cy, float64(labelW)+hi, cy)
			}
			fmt.Fprintf(&body, `<text x="%.1f" y="%d">%s</text>`+"\n", float64(labelW)+w+6, y+barH-5, html.EscapeString(fmtNum(v, p.unit)))
			y += barH + gap
		}
		y += 14
	}
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, y+30)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	b.WriteString(body.String())
	fmt.Fprintf(&b, `<text x="10" y="%d" fill="#555">%s — median of %s; whiskers: min–max. Same cluster, same run.</text>`+"\n", y+10,
		html.EscapeString(r.machine.oneLine()), runsText(r))
	b.WriteString("</svg>\n")
	return b.String()
}

func runsText(r *results) string {
	if m := r.m["p1.g1"]; m != nil {
		return fmt.Sprintf("%d run(s)", len(m.Vals))
	}
	return "the runs"
}

func minOf(v []float64) float64 {
	m := math.Inf(1)
	for _, x := range v {
		m = math.Min(m, x)
	}
	return m
}

func maxOf(v []float64) float64 {
	m := math.Inf(-1)
	for _, x := range v {
		m = math.Max(m, x)
	}
	return m
}
