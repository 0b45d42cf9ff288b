"""``fastprompt demo`` trains with the Trainer of ``fastprompt train`` (no data, no weights)."""
import fastprompt.train as train
from fastprompt import cli


def test_demo_trains_with_the_trainer(monkeypatch, capsys):
    runs = []
    fit = train.Trainer.fit

    def counted_fit(self):
        result = fit(self)
        runs.append((self.step, self.settings.batch_size, self.optimizer.param_groups[0]["lr"]))
        return result

    monkeypatch.setattr(train.Trainer, "fit", counted_fit)
    argv = ["demo", "--method", "coop", "--steps", "5", "--n-classes", "2", "--shots", "3", "--batch-size", "4",
            "--lr", "0.01", "--no-compare"]
    assert cli.main(argv) == 0
    assert runs == [(5, 4, 0.01)]  # 5 optimizer steps of batch 4 at the constant --lr
    out = capsys.readouterr().out
    assert "trained 5 steps in" in out and "final train loss" in out and "chance 50.0%" in out
