"""Line figures stay readable: a band far wider than the lines is clipped (and said), long text wraps."""
from taskloc.report import figures


def _spec(lo, hi, title="t"):
    return {"kind": "lines", "name": "n", "title": title, "xlabel": "x", "ylabel": "y", "ylim": None, "logx": False,
            "series": [{"label": "a", "x": [0, 1, 2], "y": [0.0, 0.5, 1.0], "lo": lo, "hi": hi}]}


def test_a_band_far_wider_than_the_lines_is_clipped_and_the_plot_says_so():
    plt = figures._pyplot()
    fig = figures._lines(plt, _spec([-10.0, -0.1, 0.9], [0.2, 0.7, 30.0]))
    ax = fig.axes[0]
    assert ax.get_ylim() == (-1.0, 2.0)  # lines span [0, 1]: that range again on each side
    assert any("clipped" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_a_band_within_reach_is_left_alone_and_long_titles_wrap():
    plt = figures._pyplot()
    fig = figures._lines(plt, _spec([-0.2, 0.3, 0.8], [0.2, 0.7, 1.2], title="word " * 30))
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low <= -0.2 and high >= 1.2 and not ax.texts
    assert "\n" in ax.get_title()
    plt.close(fig)
