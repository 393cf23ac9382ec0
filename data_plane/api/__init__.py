"""HTTP layer of the data plane: routers know HTTP and bodies; services hold use cases."""
