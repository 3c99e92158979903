"""seg-bench: latency and accuracy reports for exported models, with the machine and peak rates they ran against."""
