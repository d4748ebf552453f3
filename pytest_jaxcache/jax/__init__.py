"""The only code that touches JAX. Nothing outside this package imports JAX or names
one of its private parts; what this package needs of JAX's internals is listed, with
the versions it was checked on, in :mod:`pytest_jaxcache.jax.seams`, and each is
feature-detected: without it, one notice and a working (if less informed) session.

- ``importing``    find JAX without importing it; configure it the moment it is imported
- ``seams``        every private JAX name we use, where, and how it is detected
- ``install``      the installation into one process, in named steps, and its undo
- ``adapter``      our store behind JAX's cache interface, and the wrap around each compile
- ``keyparts``     the parts of each cache key, as JAX hashes them
- ``signals``      what JAX says: its log (why not written), its warnings, its events
- ``lowering``     the lowering tier: lowered modules served from the store
- ``lowering_key`` the exact key of one lowering, or why a program has none
- ``lowering_values`` the tokens of every value a lowering depends on
- ``lowering_internals`` what the key reads of JAX, and why a program has no key
- ``lowering_entry`` the bytes of one stored lowered module, checked when read
- ``fingerprint``  what this process's entries depend on besides the program
- ``runtime``      public JAX calls the plugin makes during tests
"""
