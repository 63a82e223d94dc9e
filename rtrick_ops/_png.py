"""A tiny line-chart plotter and image-grid writer: PNG files with the Python standard library only.

The benchmarks and examples may not depend on matplotlib, so this draws on an
RGB canvas (axes, nice ticks, polylines with markers, a shared legend) and
encodes it with zlib + struct. Text uses a built-in 5x7 bitmap font (upper
case, digits and a few symbols; lower case is drawn as upper case).

    line_chart("out.png", panels=[{"title": "forward", "x_label": "log2(n)", "y_label": "GB/s",
                                   "series": [("eager", [16, 18], [3.1, 4.2])]}])
    image_grid("digits.png", images, rows=2, cols=10, scale=6)  # images: 2-D lists of values in [0, 1]
"""
import math
import struct
import zlib

# Each glyph is 7 rows of 5 pixels; each row is one base-32 digit (bit 4 = leftmost pixel).
_GLYPH_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.-+/:()^=_,%*"
_GLYPH_ROWS = (
    "EHJLPHE4C4444EEH1248VV2421HE26AIV22VGU11HE68GUHHEV124888EHHEHHEEHHF12CEHHVHHHUHHUHHUEHGGGHESIHHHIS"
    "VGGUGGVVGGUGGGEHGNHHFHHHVHHHE44444E72222ICHIKOKIHGGGGGGVHRLLHHHHHPLJHHEHHHHHEUHHUGGGEHHHLIDUHHUKIH"
    "FGGE11UV444444HHHHHHEHHHHHA4HHHLLLAHHA4AHHHHHA444V1248GV00000CC000V000044V44001248G00CC0CC0248884284"
    "222484AH000000V0V00000000V0000C48OP248J304LEL40"
)
_FONT = {char: [int(digit, 32) for digit in _GLYPH_ROWS[7 * i:7 * i + 7]] for i, char in enumerate(_GLYPH_CHARS)}
_GLYPH_W, _GLYPH_H = 5, 7
_LEGEND_ROW_HEIGHT = 26

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (23, 190, 207)]
BLACK, GREY, LIGHT_GREY, WHITE = (0, 0, 0), (110, 110, 110), (225, 225, 225), (255, 255, 255)


class Canvas:
    """An RGB image with the few drawing primitives a line chart needs."""

    def __init__(self, width, height, background=WHITE):
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def dot(self, x, y, color):
        if 0 <= x < self.width and 0 <= y < self.height:
            offset = 3 * (y * self.width + x)
            self.pixels[offset:offset + 3] = bytes(color)

    def rect(self, x0, y0, x1, y1, color):
        """Filled rectangle with inclusive corners."""
        for y in range(max(y0, 0), min(y1, self.height - 1) + 1):
            for x in range(max(x0, 0), min(x1, self.width - 1) + 1):
                self.dot(x, y, color)

    def line(self, x0, y0, x1, y1, color, thickness=1):
        """Bresenham line, thickened by stamping a square at each step."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        step_x, step_y = (1 if x1 > x0 else -1), (1 if y1 > y0 else -1)
        error, half = dx + dy, thickness // 2
        while True:
            self.rect(x0 - half, y0 - half, x0 - half + thickness - 1, y0 - half + thickness - 1, color)
            if (x0, y0) == (x1, y1):
                return
            doubled = 2 * error
            if doubled >= dy:
                error, x0 = error + dy, x0 + step_x
            if doubled <= dx:
                error, y0 = error + dx, y0 + step_y

    def text(self, x, y, string, color=BLACK, scale=2, vertical=False):
        """Draw `string` with its top-left corner at (x, y); vertical text reads bottom to top."""
        for index, char in enumerate(string.upper()):
            advance = index * (_GLYPH_W + 1) * scale
            for row, bits in enumerate(_FONT.get(char, [0] * _GLYPH_H)):
                for col in range(_GLYPH_W):
                    if bits >> (_GLYPH_W - 1 - col) & 1:
                        if vertical:
                            px, py = x + row * scale, y - advance - col * scale
                        else:
                            px, py = x + advance + col * scale, y + row * scale
                        self.rect(px, py, px + scale - 1, py + scale - 1, color)

    def save_png(self, path):
        _write_png(path, self.width, self.height, self.pixels, _PNG_RGB)


_PNG_GRAYSCALE, _PNG_RGB = 0, 2  # PNG color types; their bytes per pixel are 1 and 3
_PNG_BYTES_PER_PIXEL = {_PNG_GRAYSCALE: 1, _PNG_RGB: 3}


def _write_png(path, width, height, pixels, color_type):
    """Encode 8-bit pixels (row-major bytes) as a PNG file."""
    row_bytes = _PNG_BYTES_PER_PIXEL[color_type] * width
    rows = b"".join(b"\x00" + bytes(pixels[row_bytes * y:row_bytes * (y + 1)])
                    for y in range(height))  # filter type 0 on every scanline

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    with open(path, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
                   + chunk(b"IEND", b""))


def text_width(string, scale=2):
    return len(string) * (_GLYPH_W + 1) * scale - scale


def nice_ticks(low, high, target_count=5):
    """Round tick values (1, 2 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        high = low + 1
    raw_step = (high - low) / target_count
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw_step)
    first = math.floor(low / step) * step
    count = math.ceil((high - first) / step - 1e-9)
    return [first + i * step for i in range(count + 1)]


def format_tick(value):
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:g}"


def _draw_panel(canvas, panel, box, colors, y_from_zero):
    """One chart inside box = (left, top, right, bottom) of the plotting area."""
    left, top, right, bottom = box
    xs = [x for _, series_xs, _ in panel["series"] for x in series_xs]
    ys = [y for _, _, series_ys in panel["series"] for y in series_ys]
    x_ticks = nice_ticks(min(xs), max(xs))
    y_ticks = nice_ticks(0 if y_from_zero else min(ys), max(ys))

    def to_pixel(x, y):
        px = left + (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * (right - left)
        py = bottom - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (bottom - top)
        return round(px), round(py)

    for y in y_ticks:
        _, py = to_pixel(x_ticks[0], y)
        canvas.line(left, py, right, py, LIGHT_GREY)
        label = format_tick(y)
        canvas.text(left - 8 - text_width(label), py - 7, label, GREY)
    for x in x_ticks:
        px, _ = to_pixel(x, y_ticks[0])
        canvas.line(px, bottom, px, bottom + 5, BLACK)
        label = format_tick(x)
        canvas.text(px - text_width(label) // 2, bottom + 10, label, GREY)
    canvas.line(left, top, left, bottom, BLACK, 2)
    canvas.line(left, bottom, right, bottom, BLACK, 2)
    for name, series_xs, series_ys in panel["series"]:
        points = [to_pixel(x, y) for x, y in zip(series_xs, series_ys)]
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            canvas.line(x0, y0, x1, y1, colors[name], 3)
        for px, py in points:
            canvas.rect(px - 4, py - 4, px + 4, py + 4, colors[name])
    canvas.text((left + right - text_width(panel["title"], 3)) // 2, top - 34, panel["title"], BLACK, 3)
    canvas.text((left + right - text_width(panel["x_label"])) // 2, bottom + 34, panel["x_label"])
    canvas.text(left - 78, (top + bottom + text_width(panel["y_label"])) // 2, panel["y_label"], vertical=True)


def _legend_rows(names, max_width):
    """Split the legend entries into rows no wider than max_width: [[(name, entry width)]]."""
    rows, row_width = [[]], 0
    for name in names:
        width = 30 + text_width(name) + 30  # color box, gap, name, gap to the next entry
        if rows[-1] and row_width + width > max_width:
            rows, row_width = rows + [[]], 0
        rows[-1].append((name, width))
        row_width += width
    return rows


def _draw_legend(canvas, rows, colors, top):
    """Rows of colored boxes and names, each row centered."""
    for row_index, row in enumerate(rows):
        x, y = (canvas.width - sum(width for _, width in row)) // 2, top + row_index * _LEGEND_ROW_HEIGHT
        for name, width in row:
            canvas.rect(x, y, x + 20, y + 14, colors[name])
            canvas.text(x + 30, y, name)
            x += width


def line_chart(path, panels, panel_width=460, panel_height=360, y_from_zero=True, title=None):
    """Write a PNG with the panels side by side and one legend for all series.

    panels: [{"title", "x_label", "y_label", "series": [(name, xs, ys), ...]}];
    a series name keeps its color across panels.
    """
    margin_left, margin_right, margin_top, axis_labels_height = 100, 30, 70 + (40 if title else 0), 70
    cell_width = margin_left + panel_width + margin_right
    names = list(dict.fromkeys(name for panel in panels for name, _, _ in panel["series"]))
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    legend_rows = _legend_rows(names, cell_width * len(panels) - 40)
    canvas = Canvas(cell_width * len(panels),
                    margin_top + panel_height + axis_labels_height + len(legend_rows) * _LEGEND_ROW_HEIGHT + 20)
    if title:
        canvas.text((canvas.width - text_width(title, 3)) // 2, 16, title, BLACK, 3)
    for index, panel in enumerate(panels):
        left = index * cell_width + margin_left
        _draw_panel(canvas, panel, (left, margin_top, left + panel_width, margin_top + panel_height),
                    colors, y_from_zero)
    _draw_legend(canvas, legend_rows, colors, margin_top + panel_height + axis_labels_height)
    canvas.save_png(path)


def image_grid(path, images, rows, cols, scale=4, padding=1, padding_value=0.5):
    """Write grayscale images side by side in a rows x cols grid, filled row by row.

    images: up to rows * cols images, each a 2-D sequence (rows of pixels) of
    values in [0, 1] (0 black, 1 white; values outside are clipped), all of one
    size, or None for a cell left empty. Each pixel becomes a scale x scale
    square; cells are separated by `padding` pixels of gray level
    `padding_value`, which also fills empty cells.
    """
    present = [image for image in images if image is not None]
    if not present or len(images) > rows * cols:
        raise ValueError(f"need 1 to {rows * cols} images for a {rows}x{cols} grid, got {len(present)} "
                         f"in {len(images)} cells")
    image_height, image_width = len(present[0]), len(present[0][0])
    if any(len(image) != image_height or any(len(row) != image_width for row in image) for image in present):
        raise ValueError("all images must have the same size")
    cell_width, cell_height = image_width * scale + padding, image_height * scale + padding
    width, height = cols * cell_width + padding, rows * cell_height + padding
    pixels = bytearray([round(255 * min(max(padding_value, 0.0), 1.0))]) * (width * height)
    for index, image in enumerate(images):
        if image is None:
            continue
        left = (index % cols) * cell_width + padding
        top = (index // cols) * cell_height + padding
        for y, image_row in enumerate(image):
            scanline = bytes(round(255 * min(max(value, 0.0), 1.0)) for value in image_row for _ in range(scale))
            for dy in range(scale):
                start = (top + y * scale + dy) * width + left
                pixels[start:start + len(scanline)] = scanline
    _write_png(path, width, height, pixels, _PNG_GRAYSCALE)
