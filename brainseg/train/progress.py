"""A rich progress bar for training: one line per model with epoch, loss and best Dice."""

from __future__ import annotations

from collections.abc import Callable


class TrainProgress:
    """Context manager; `for_model` returns the callback a Trainer calls after each step."""

    def __init__(self, *, enabled: bool, epochs: int) -> None:
        self.enabled, self.epochs = enabled, epochs
        self._progress = None

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("best val Dice {task.fields[dice]:.4f}"),
                TimeElapsedColumn(),
            )
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def for_model(self, name: str, steps_per_epoch: int, start_epoch: int,
                  epochs: int | None = None) -> Callable[..., None]:
        """The callback of one model's line; `epochs` defaults to the run's (the student has its own)."""
        if self._progress is None:
            return lambda **fields: None
        epochs = epochs or self.epochs
        task = self._progress.add_task(
            name, total=epochs * steps_per_epoch, completed=start_epoch * steps_per_epoch,
            epoch=start_epoch, epochs=epochs, loss=0.0, dice=0.0,
        )

        def update(*, epoch: int, loss: float | None = None, dice: float | None = None,
                   done_epoch: bool = False) -> None:
            fields = {"epoch": epoch}
            if loss is not None:
                fields["loss"] = loss
            if dice is not None:
                fields["dice"] = max(dice, 0.0)
            if done_epoch:
                # early stopping ends the bar where it is
                self._progress.update(task, completed=epoch * steps_per_epoch, **fields)
            else:
                self._progress.update(task, advance=1, **fields)

        return update
