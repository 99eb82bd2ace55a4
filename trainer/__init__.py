"""ASMG learning core: base model, update methods, meta generator, replay."""
