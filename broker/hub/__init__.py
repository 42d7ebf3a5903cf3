"""The lookup tables jobs and chat share: who is connected and logged in (:mod:`.connections`), and the room actors started on demand under a supervisor (:mod:`.rooms`)."""
