"""Drop-in diffusers schedulers: the PNDM family, Heavy-Ball momentum and GHVB (VP and flow matching)."""
