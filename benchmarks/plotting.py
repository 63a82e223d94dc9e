"""The two figure kinds the benchmarks and examples draw, with matplotlib (the "plots" extra).

    line_chart("out.png", panels=[{"title": "forward", "x_label": "log2(n)", "y_label": "GB/s",
                                   "series": [("eager", [16, 18], [3.1, 4.2])]}], title="...")
    image_grid("digits.png", images, rows=2, cols=10, scale=6)  # images: 2-D lists of values in [0, 1]

Not part of the runtime package: `import rtrick_ops` never imports matplotlib.
"""
import matplotlib

matplotlib.use("Agg")  # files only, no display: works on headless machines and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PANEL_INCHES = (4.6, 3.6)


def line_chart(path, panels, y_from_zero=True, title=None):
    """Write a PNG with the panels side by side and one legend for all series.

    panels: [{"title", "x_label", "y_label", "series": [(name, xs, ys), ...]}];
    a series name keeps its color across panels.
    """
    if not panels:
        raise ValueError("panels must name at least one panel")
    names = list(dict.fromkeys(name for panel in panels for name, _, _ in panel["series"]))
    colors = {name: f"C{i % 10}" for i, name in enumerate(names)}
    figure, axes_row = plt.subplots(1, len(panels), squeeze=False, constrained_layout=True,
                                    figsize=(PANEL_INCHES[0] * len(panels), PANEL_INCHES[1] + 0.6))
    for axes, panel in zip(axes_row[0], panels):
        for name, xs, ys in panel["series"]:
            axes.plot(xs, ys, marker="o", markersize=3.5, color=colors[name], label=name)
        if y_from_zero:
            axes.set_ylim(bottom=0)
        axes.set(title=panel["title"], xlabel=panel["x_label"], ylabel=panel["y_label"])
        axes.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[name], marker="o", markersize=3.5) for name in names]
    figure.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), frameon=False)
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def image_grid(path, images, rows, cols, scale=4, padding=1, padding_value=0.5):
    """Write grayscale images side by side in a rows x cols grid, filled row by row, pixel for pixel.

    images: up to rows * cols images, each a 2-D sequence (rows of pixels) of
    values in [0, 1] (0 black, 1 white; values outside are clipped), all of one
    size, or None for a cell left empty. Each pixel becomes a scale x scale
    square; cells are separated by `padding` pixels of gray level
    `padding_value`, which also fills empty cells.
    """
    present = [np.asarray(image, dtype=float) for image in images if image is not None]
    if not present or len(images) > rows * cols:
        raise ValueError(f"images: need 1 to {rows * cols} images for a {rows}x{cols} grid, got {len(present)} "
                         f"in {len(images)} cells")
    if any(image.ndim != 2 or image.shape != present[0].shape for image in present):
        raise ValueError("images: all must be 2-D and of the same size")
    image_height, image_width = present[0].shape
    cell_height, cell_width = image_height * scale + padding, image_width * scale + padding
    canvas = np.full((rows * cell_height + padding, cols * cell_width + padding), padding_value, dtype=float)
    for index, image in enumerate(images):
        if image is None:
            continue
        top = (index // cols) * cell_height + padding
        left = (index % cols) * cell_width + padding
        block = np.kron(np.asarray(image, dtype=float), np.ones((scale, scale)))
        canvas[top:top + block.shape[0], left:left + block.shape[1]] = block
    # imsave writes one image pixel per array element: no axes, no resampling.
    plt.imsave(path, np.clip(canvas, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0)
