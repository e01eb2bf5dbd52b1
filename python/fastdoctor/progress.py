"""One progress reporter for every long loop (training steps, reward scoring): a tqdm bar on a terminal,
otherwise one parseable `[name] unit=done/total key=value ...` line every `every` items."""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, name: str, total: int, *, done: int = 0, every: int = 10, unit: str = "step",
                 enabled: bool = True):
        self.name, self.total, self.done, self.every, self.unit = name, total, done, every, unit
        self.enabled = enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=name, unit=unit)

    def update(self, fields: dict | None = None, *, postfix: str | None = None) -> None:
        """One more item done; `fields` go on the log line, `postfix` (a field name) on the bar."""
        self.done += 1
        if not self.enabled:
            return
        fields = fields or {}
        if self.bar is not None:
            self.bar.update(1)
            if postfix is not None and postfix in fields:
                self.bar.set_postfix({postfix: f"{fields[postfix]:.4f}"})
        elif self.done % self.every == 0 or self.done == self.total:
            text = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            print(f"[{self.name}] {self.unit}={self.done}/{self.total} {text}".rstrip(), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
