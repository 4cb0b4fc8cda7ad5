"""nn.Modules for single terms: they hold hyper-parameters, constants and running state."""
