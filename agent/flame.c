/* flame.c - an SVG flame graph of a call tree (see folded.h).
 *
 * Classic layout: the root ("all") at the bottom, callees stacked above
 * their callers, each frame as wide as its share of the samples, siblings
 * in name order. Every frame is a <g> with a <title> (name, samples,
 * percentage) so hovering in a browser shows the figures; a label is drawn
 * when the frame is wide enough, cut with ".." to fit.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "folded.h"

#define FRAME_H 16
#define FONT_PX 12
#define CHAR_W 7.0 /* approximate advance of a 12px monospace glyph */
#define PAD 10
#define TOP 36

static int max_depth(const tb_flame_node *n)
{
    int d = 0;
    for (size_t i = 0; i < n->nkids; i++) {
        int k = max_depth(n->kids[i]);
        if (k > d)
            d = k;
    }
    return d + 1;
}

static unsigned name_hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

typedef struct ctx {
    FILE *out;
    int ns; /* counts are nanoseconds */
    double scale; /* px per sample */
    double min_w;
    uint64_t total;
    int height;
    size_t drawn, hidden;
} ctx;

static void label(FILE *out, const char *name, double w)
{
    size_t fit = w > 6 ? (size_t)((w - 6) / CHAR_W) : 0;
    if (fit < 3)
        return;
    char buf[512];
    size_t len = strlen(name);
    if (len <= fit && len < sizeof buf) {
        memcpy(buf, name, len + 1);
    } else {
        size_t k = fit - 2 < sizeof buf - 3 ? fit - 2 : sizeof buf - 3;
        while (k > 0 && ((unsigned char)name[k] & 0xC0) == 0x80)
            k--; /* cut on a UTF-8 character boundary */
        memcpy(buf, name, k);
        memcpy(buf + k, "..", 3);
    }
    tb_xml_str(out, buf);
}

/* A count as text: "12 samples", or a duration ("1.25 ms") for ns. */
static const char *amount(char *buf, size_t n, int ns, uint64_t v)
{
    if (!ns)
        snprintf(buf, n, "%llu sample%s", (unsigned long long)v, v == 1 ? "" : "s");
    else if (v >= 1000000000ull)
        snprintf(buf, n, "%.3f s", (double)v / 1e9);
    else if (v >= 1000000ull)
        snprintf(buf, n, "%.3f ms", (double)v / 1e6);
    else if (v >= 1000ull)
        snprintf(buf, n, "%.3f us", (double)v / 1e3);
    else
        snprintf(buf, n, "%llu ns", (unsigned long long)v);
    return buf;
}

static void draw(ctx *c, const tb_flame_node *n, double x, int depth)
{
    double w = (double)n->total * c->scale;
    if (w < c->min_w) {
        c->hidden++;
        return;
    }
    double y = c->height - PAD - 14 - (depth + 1) * FRAME_H;
    unsigned h = name_hash(n->name);
    int r = 205 + (int)(h % 50), g = (int)((h >> 8) % 190), b = (int)((h >> 16) % 55);
    if (depth == 0)
        r = 230, g = 120, b = 60;
    double pct = c->total ? 100.0 * (double)n->total / (double)c->total : 0;
    fprintf(c->out, "<g class=\"f\"><title>");
    tb_xml_str(c->out, n->name);
    char tot[48], self[48];
    if (c->ns)
        amount(self, sizeof self, 1, n->self);
    else
        snprintf(self, sizeof self, "%llu", (unsigned long long)n->self);
    fprintf(c->out, " (%s, %.2f%%; self %s)</title>", amount(tot, sizeof tot, c->ns, n->total), pct, self);
    fprintf(c->out,
            "<rect x=\"%.2f\" y=\"%.0f\" width=\"%.2f\" height=\"%d\" fill=\"rgb(%d,%d,%d)\" "
            "rx=\"2\"/>",
            x, y, w, FRAME_H - 1, r, g, b);
    fprintf(c->out, "<text x=\"%.2f\" y=\"%.0f\">", x + 3, y + FRAME_H - 4.5);
    label(c->out, n->name, w);
    fputs("</text></g>\n", c->out);
    c->drawn++;
    double kx = x;
    for (size_t i = 0; i < n->nkids; i++) {
        draw(c, n->kids[i], kx, depth + 1);
        kx += (double)n->kids[i]->total * c->scale;
    }
}

int tb_flame_svg(const tb_flame_node *root, FILE *out, const tb_flame_opts *o)
{
    int width = o && o->width_px > 0 ? o->width_px : 1200;
    double min_w = o && o->min_width_px > 0 ? o->min_width_px : 0.1;
    int ns = o && o->ns;
    const char *title = o && o->title ? o->title : ns ? "GPU time by launching stack" : "CPU flame graph";
    int depth = max_depth(root);
    int height = TOP + depth * FRAME_H + 2 * PAD + 14;
    ctx c = {.out = out,
             .ns = ns,
             .scale = root->total ? (double)(width - 2 * PAD) / (double)root->total : 0,
             .min_w = min_w,
             .total = root->total,
             .height = height};
    fprintf(out, "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n");
    fprintf(out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\">\n",
            width, height, width, height);
    fprintf(out, "<style>text{font-family:monospace;font-size:%dpx;fill:#000;pointer-events:none}"
                 "g.f:hover rect{stroke:#000;stroke-width:0.8}"
                 ".t{font-size:17px;text-anchor:middle}.s{fill:#555}</style>\n",
            FONT_PX);
    fprintf(out, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#f8f8f0\"/>\n", width,
            height);
    fprintf(out, "<text class=\"t\" x=\"%d\" y=\"24\">", width / 2);
    tb_xml_str(out, title);
    fputs("</text>\n", out);
    if (!root->total) {
        fprintf(out, "<text x=\"%d\" y=\"%d\">%s</text>\n", PAD, TOP + 20,
                ns ? "no GPU work in this profile" : "no CPU samples in this profile");
    } else {
        draw(&c, root, PAD, 0);
    }
    char all[48];
    fprintf(out,
            "<text class=\"s\" x=\"%d\" y=\"%d\">%s%s; hover a frame for its counts; "
            "%zu frame%s narrower than %.1fpx not drawn</text>\n",
            PAD, height - 4, amount(all, sizeof all, ns, root->total), ns ? " of GPU work" : "", c.hidden,
            c.hidden == 1 ? "" : "s", min_w);
    fputs("</svg>\n", out);
    return ferror(out) ? -EIO : 0;
}
