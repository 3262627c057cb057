// The browser test with the page's WebCodecs renderer (the cases are in player-cases.js).
import { playerTests } from "./player-cases.js";

playerTests("webcodecs");
