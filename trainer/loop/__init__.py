"""The period loop: train each closed period exactly once, publish, and keep the rollover clock."""
