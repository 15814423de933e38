"""Write the illustrative demo skill data: `python scripts/make_demo_data.py`.

Hand-written records for all 12 skills (12 per skill, 3 of them held out for validation), in the same
layout and manifest format as `mdkif data build`, so the demo and the tests run offline. The content
is short and medically sensible but illustrative only: never train a model for real use on it.
Output formats follow the real builders (labels joined by '; ', 'none' when empty; yes/no answers;
multiple-choice answers as 'Answer: X', the form the evaluation harness parses).
"""

from __future__ import annotations

from pathlib import Path

from mdkif.data.build import write_skill_data
from mdkif.data.records import SKILLS, SkillRecord, make_id

OUT = Path(__file__).resolve().parents[1] / "src" / "mdkif" / "assets" / "demo_skills"
SEED = 0

# skill -> (instruction, [(input, output), ...]). One instruction per skill keeps the file readable;
# the real builders vary the wording.
DEMO: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "qa": (
        "Answer the following medical question.",
        [
            (
                "What is hypertension?",
                "Hypertension is persistently raised blood pressure in the arteries. It often causes no symptoms but increases the risk of stroke, heart attack and kidney disease.",
            ),
            (
                "What are common symptoms of type 2 diabetes?",
                "Increased thirst, frequent urination, tiredness, blurred vision and slow-healing wounds; many people have no symptoms at first.",
            ),
            (
                "How is iron-deficiency anaemia treated?",
                "By finding and treating the cause, such as blood loss, and replacing iron, usually with oral iron tablets; intravenous iron is used if tablets fail or are not tolerated.",
            ),
            (
                "What causes tetanus?",
                "A toxin made by the bacterium Clostridium tetani, whose spores enter the body through wounds. Vaccination prevents it.",
            ),
            (
                "What is the usual first-line medicine for type 2 diabetes?",
                "Metformin, together with diet and exercise, unless it is contraindicated (for example in severe kidney impairment).",
            ),
            (
                "How does influenza spread?",
                "Mainly through respiratory droplets when an infected person coughs, sneezes or talks, and less often by touching contaminated surfaces and then the face.",
            ),
            (
                "What are the warning signs of a stroke?",
                "Sudden face drooping, arm or leg weakness, and difficulty speaking (FAST); call emergency services at once, because treatment is time-critical.",
            ),
            (
                "Do antibiotics help with the common cold?",
                "No. Colds are caused by viruses, and antibiotics only act on bacteria; rest, fluids and symptom relief are the treatment.",
            ),
            (
                "What is a normal resting heart rate for adults?",
                "Usually between 60 and 100 beats per minute; trained athletes can have lower rates.",
            ),
            ("Which vitamin deficiency causes scurvy?", "Vitamin C (ascorbic acid) deficiency."),
            (
                "How is asthma diagnosed?",
                "From the history of variable wheeze, cough and breathlessness, supported by tests such as spirometry showing reversible airflow obstruction or variable peak flow.",
            ),
            (
                "What is the main risk of taking warfarin?",
                "Bleeding. Its effect is monitored with the INR blood test, and many drugs and foods can change it.",
            ),
        ],
    ),
    "mcqa": (
        "Answer the multiple-choice question. Reply with 'Answer: ' and the letter of the correct option.",
        [
            ("Which organ produces insulin?\nA. Liver\nB. Pancreas\nC. Kidney\nD. Spleen", "Answer: B"),
            (
                "Which vitamin is essential for blood clotting?\nA. Vitamin A\nB. Vitamin C\nC. Vitamin D\nD. Vitamin K",
                "Answer: D",
            ),
            (
                "What is the most common cause of community-acquired pneumonia?\nA. Streptococcus pneumoniae\nB. Escherichia coli\nC. Staphylococcus epidermidis\nD. Candida albicans",
                "Answer: A",
            ),
            (
                "Which electrolyte disturbance causes peaked T waves on an ECG?\nA. Hyponatraemia\nB. Hypokalaemia\nC. Hyperkalaemia\nD. Hypercalcaemia",
                "Answer: C",
            ),
            (
                "Which cells are destroyed in type 1 diabetes?\nA. Alpha cells\nB. Beta cells\nC. Delta cells\nD. Acinar cells",
                "Answer: B",
            ),
            (
                "What is the antidote for paracetamol (acetaminophen) overdose?\nA. Naloxone\nB. Flumazenil\nC. N-acetylcysteine\nD. Atropine",
                "Answer: C",
            ),
            (
                "Which blood vessel carries oxygenated blood from the lungs to the heart?\nA. Pulmonary artery\nB. Pulmonary vein\nC. Superior vena cava\nD. Aorta",
                "Answer: B",
            ),
            (
                "Which hormone is low in primary hypothyroidism?\nA. TSH\nB. Free T4\nC. Cortisol\nD. Prolactin",
                "Answer: B",
            ),
            (
                "Which virus causes chickenpox?\nA. Varicella-zoster virus\nB. Epstein-Barr virus\nC. Measles virus\nD. Rubella virus",
                "Answer: A",
            ),
            (
                "Which drug class do atorvastatin and simvastatin belong to?\nA. Beta blockers\nB. ACE inhibitors\nC. Statins\nD. Diuretics",
                "Answer: C",
            ),
            (
                "Where is the sinoatrial node located?\nA. Left ventricle\nB. Right atrium\nC. Interventricular septum\nD. Left atrium",
                "Answer: B",
            ),
            (
                "Which test is used to monitor long-term blood glucose control?\nA. HbA1c\nB. Serum creatinine\nC. Troponin\nD. D-dimer",
                "Answer: A",
            ),
        ],
    ),
    "dialogue": (
        "You are a doctor. Reply to the patient's message.",
        [
            (
                "Patient: I have had a sore throat and a mild fever for two days. Should I take antibiotics?",
                "Most sore throats are viral and get better within a week without antibiotics. Rest, drink fluids and use paracetamol for the fever. See a doctor if you cannot swallow, have trouble breathing, or are not improving after a few days.",
            ),
            (
                "Patient: My blood pressure reading at the pharmacy was 150/95. Is that dangerous?",
                "One high reading is not a diagnosis, but it should be checked. Please have your blood pressure measured again on several days or with home monitoring, and see your doctor to discuss the results.",
            ),
            (
                "Patient: I get heartburn after most meals. What can I do?",
                "Try smaller meals, avoid eating within three hours of bed, and cut down on alcohol, coffee and fatty food. An antacid can help short term. If it persists, or you have trouble swallowing or weight loss, please see a doctor.",
            ),
            (
                "Patient: I twisted my ankle playing football and it is swollen.",
                "Rest it, apply ice wrapped in a cloth for 15-20 minutes at a time, use a compression bandage and keep it raised. If you cannot put weight on it or the pain is severe, get it examined for a fracture.",
            ),
            (
                "Patient: I feel tired all the time and my periods are heavy.",
                "Heavy periods can cause iron-deficiency anaemia, which makes you tired. I would suggest a blood test for haemoglobin and iron levels, and we should also look into the cause of the heavy bleeding.",
            ),
            (
                "Patient: I have sudden crushing chest pain spreading to my left arm.",
                "This could be a heart attack. Call emergency services now. If you are not allergic, chew an aspirin while you wait, and do not drive yourself.",
            ),
            (
                "Patient: My child has a rash and a high fever, and the spots do not fade when I press a glass on them.",
                "A rash that does not fade under a glass with fever can be a sign of meningococcal infection. Take your child to the emergency department immediately.",
            ),
            (
                "Patient: Can I drink alcohol while taking metronidazole?",
                "No. Avoid alcohol during the course and for at least 48 hours after the last dose, because the combination can cause nausea, vomiting, flushing and palpitations.",
            ),
            (
                "Patient: I have been feeling low and have lost interest in things for over a month.",
                "Thank you for telling me. Feeling low with loss of interest for several weeks can be depression, which is treatable. Let's talk about how you are sleeping and eating, and whether you have had any thoughts of harming yourself.",
            ),
            (
                "Patient: I keep waking at night to pass urine and I am always thirsty.",
                "These symptoms can be caused by diabetes. I recommend a blood test for glucose and HbA1c, and we will also check your kidney function.",
            ),
            (
                "Patient: I was bitten by a dog and the wound is bleeding a little.",
                "Wash the wound thoroughly with soap and running water for several minutes and cover it. Please see a clinician today: dog bites often need antibiotics, and your tetanus and rabies risk should be assessed.",
            ),
            (
                "Patient: I forgot to take my blood pressure tablet this morning.",
                "Take it as soon as you remember today. If it is already nearly time for the next dose, skip the missed one. Do not take two doses at once.",
            ),
        ],
    ),
    "multilabel_classification": (
        "Which body systems does the clinical text involve? Labels: cardiovascular, respiratory, endocrine, "
        "gastrointestinal, neurological, renal. List every label that applies, separated by '; ', or answer 'none'.",
        [
            (
                "Patient with poorly controlled type 2 diabetes and new chest pain on exertion.",
                "cardiovascular; endocrine",
            ),
            ("Productive cough, fever and crackles at the right lung base.", "respiratory"),
            ("Sudden left-sided weakness and slurred speech.", "neurological"),
            ("Epigastric pain after meals and dark, tarry stools.", "gastrointestinal"),
            ("Rising creatinine and reduced urine output after contrast imaging.", "renal"),
            ("Palpitations, weight loss and heat intolerance with a low TSH.", "cardiovascular; endocrine"),
            (
                "Shortness of breath, ankle swelling and bilateral lung crackles in heart failure.",
                "cardiovascular; respiratory",
            ),
            ("Routine vaccination visit for a healthy adult.", "none"),
            ("Diabetic patient with protein in the urine and declining kidney function.", "endocrine; renal"),
            ("Recurrent migraine headaches with visual aura.", "neurological"),
            ("Wheezing and chest tightness triggered by exercise.", "respiratory"),
            ("Jaundice, dark urine and right upper quadrant pain.", "gastrointestinal"),
        ],
    ),
    "reading_comprehension": (
        "Read the passage and answer the question using information from the passage.",
        [
            (
                "Passage: Metformin lowers blood glucose mainly by reducing glucose production in the liver. It rarely causes hypoglycaemia on its own.\nQuestion: How does metformin lower blood glucose?",
                "Mainly by reducing glucose production in the liver.",
            ),
            (
                "Passage: Measles is a highly contagious viral illness. Two doses of the MMR vaccine are about 97% effective at preventing it.\nQuestion: How effective are two doses of MMR against measles?",
                "About 97% effective.",
            ),
            (
                "Passage: Iron is absorbed best on an empty stomach; vitamin C increases absorption, while tea and calcium reduce it.\nQuestion: What reduces iron absorption?",
                "Tea and calcium.",
            ),
            (
                "Passage: The appendix is a small pouch attached to the large intestine. Appendicitis usually starts with pain around the navel that moves to the lower right abdomen.\nQuestion: Where does appendicitis pain usually end up?",
                "The lower right abdomen.",
            ),
            (
                "Passage: Troponin is a protein released into the blood when heart muscle is damaged, so it is measured when a heart attack is suspected.\nQuestion: Why is troponin measured?",
                "To detect heart muscle damage when a heart attack is suspected.",
            ),
            (
                "Passage: Shingles is caused by reactivation of the varicella-zoster virus, which stays dormant in nerve tissue after chickenpox.\nQuestion: Does shingles come from a new infection?",
                "No. It is a reactivation of the varicella-zoster virus left dormant after chickenpox.",
            ),
            (
                "Passage: Insulin is made by beta cells in the pancreatic islets and lets cells take up glucose from the blood.\nQuestion: Which cells make insulin?",
                "Beta cells in the pancreatic islets.",
            ),
            (
                "Passage: Oral rehydration solution contains water, glucose and salts; glucose helps the gut absorb sodium and water.\nQuestion: Why does oral rehydration solution contain glucose?",
                "Glucose helps the gut absorb sodium and water.",
            ),
            (
                "Passage: Tuberculosis spreads through the air when a person with active lung disease coughs. Latent infection is not contagious.\nQuestion: Is latent tuberculosis contagious?",
                "No.",
            ),
            (
                "Passage: Folic acid taken before conception and in early pregnancy lowers the risk of neural tube defects such as spina bifida.\nQuestion: What does folic acid in early pregnancy help prevent?",
                "Neural tube defects such as spina bifida.",
            ),
            (
                "Passage: Gout is caused by urate crystals in a joint; it often affects the big toe with sudden severe pain and redness.\nQuestion: Which joint does gout often affect?",
                "The big toe.",
            ),
            (
                "Passage: Statins lower LDL cholesterol by blocking HMG-CoA reductase, an enzyme in cholesterol synthesis.\nQuestion: Which enzyme do statins block?",
                "HMG-CoA reductase.",
            ),
        ],
    ),
    "nli": (
        "Does the premise entail the hypothesis, contradict it, or neither? Answer entailment, contradiction or neutral.",
        [
            (
                "Premise: The patient's blood pressure is 165/100 mmHg.\nHypothesis: The patient has an elevated blood pressure.",
                "entailment",
            ),
            (
                "Premise: The patient denies chest pain.\nHypothesis: The patient reports chest pain.",
                "contradiction",
            ),
            ("Premise: The patient has a history of asthma.\nHypothesis: The patient smokes.", "neutral"),
            (
                "Premise: Chest X-ray shows a right lower lobe consolidation.\nHypothesis: There is an abnormality on the chest X-ray.",
                "entailment",
            ),
            (
                "Premise: The patient is afebrile.\nHypothesis: The patient has a fever of 39 C.",
                "contradiction",
            ),
            ("Premise: She takes metformin twice daily.\nHypothesis: She has diabetes.", "neutral"),
            ("Premise: Haemoglobin is 7.2 g/dL.\nHypothesis: The patient is anaemic.", "entailment"),
            (
                "Premise: The patient walked into the clinic unaided.\nHypothesis: The patient is bedbound.",
                "contradiction",
            ),
            (
                "Premise: The child received all scheduled vaccinations.\nHypothesis: The child has had the MMR vaccine.",
                "entailment",
            ),
            ("Premise: He was admitted with a headache.\nHypothesis: He has a brain tumour.", "neutral"),
            (
                "Premise: The ECG shows sinus rhythm at 72 beats per minute.\nHypothesis: The patient is in atrial fibrillation.",
                "contradiction",
            ),
            (
                "Premise: The wound culture grew MRSA.\nHypothesis: The wound is infected with a resistant bacterium.",
                "entailment",
            ),
        ],
    ),
    "summarization": (
        "Summarize the patient's message as one short medical question.",
        [
            (
                "I'm 45 and my doctor just told me my cholesterol is 6.8. I don't eat much fried food and I walk every day. Do I really need tablets or can I fix this with diet?",
                "Can high cholesterol be treated with diet instead of medication?",
            ),
            (
                "My son is 3 and has had a temperature of 38.5 since yesterday. He is drinking but sleepy. When should I take him to the hospital?",
                "When should a child with a fever be taken to hospital?",
            ),
            (
                "I started lisinopril last month and now I have a dry cough that won't go away, especially at night. Could it be the tablet?",
                "Can lisinopril cause a persistent dry cough?",
            ),
            (
                "I'm pregnant, 10 weeks, and have a bad headache. Is it safe to take paracetamol or should I avoid all painkillers?",
                "Is paracetamol safe during pregnancy?",
            ),
            (
                "Every time I eat bread or pasta I get bloated and have diarrhoea. My aunt has coeliac disease. How do I find out if I have it too?",
                "How is coeliac disease diagnosed?",
            ),
            (
                "I was told I have a vitamin D level of 20. I feel fine. How much vitamin D should I take and for how long?",
                "What is the recommended vitamin D dose for a low vitamin D level?",
            ),
            (
                "My dad had a stroke last year and now he is on clopidogrel. He wants to take ibuprofen for his knee. Is that OK?",
                "Is it safe to take ibuprofen with clopidogrel?",
            ),
            (
                "I've had a rash on my elbows for months, silvery and scaly, and it gets worse in winter. What could it be and how is it treated?",
                "What causes a scaly rash on the elbows and how is it treated?",
            ),
            (
                "My mother has been forgetting names and getting lost in her own street. She is 78. What tests should she have?",
                "How is dementia diagnosed in an older person?",
            ),
            (
                "I take levothyroxine every morning with my coffee and breakfast. My TSH is still high. Could the timing matter?",
                "Does taking levothyroxine with food or coffee affect its absorption?",
            ),
            (
                "After a long flight my left calf became swollen and painful. It's been two days. Should I worry?",
                "Could calf swelling and pain after a long flight be a blood clot?",
            ),
            (
                "I'm going to Kenya next month. Which vaccines and malaria tablets do I need?",
                "Which vaccines and malaria prevention are needed for travel to Kenya?",
            ),
        ],
    ),
    "ner": (
        "List the disease mentions in the sentence in order of appearance, separated by '; ' (or 'none').",
        [
            (
                "Patients with type 2 diabetes are at higher risk of coronary artery disease.",
                "type 2 diabetes; coronary artery disease",
            ),
            ("Cystic fibrosis is caused by mutations in the CFTR gene.", "Cystic fibrosis"),
            ("The trial enrolled adults with moderate asthma.", "asthma"),
            ("Lisinopril was well tolerated in this cohort.", "none"),
            (
                "Chronic hepatitis B infection can lead to cirrhosis and hepatocellular carcinoma.",
                "hepatitis B infection; cirrhosis; hepatocellular carcinoma",
            ),
            ("Duchenne muscular dystrophy mainly affects boys.", "Duchenne muscular dystrophy"),
            ("Obesity is a risk factor for osteoarthritis of the knee.", "Obesity; osteoarthritis"),
            ("Cisplatin-induced nephrotoxicity limits the dose.", "nephrotoxicity"),
            (
                "Mutations in BRCA1 increase the risk of breast and ovarian cancer.",
                "breast and ovarian cancer",
            ),
            ("The patient presented with pneumonia and sepsis.", "pneumonia; sepsis"),
            ("Blood samples were stored at minus 80 degrees.", "none"),
            (
                "Huntington disease is an autosomal dominant neurodegenerative disorder.",
                "Huntington disease; neurodegenerative disorder",
            ),
        ],
    ),
    "relation_extraction": (
        "Does the text state that the chemical causes the disease? Answer yes or no.",
        [
            (
                "Chemical: cisplatin. Disease: nephrotoxicity.\nText: Cisplatin-induced nephrotoxicity was observed in 20% of patients.",
                "yes",
            ),
            (
                "Chemical: aspirin. Disease: gastric ulcer.\nText: Long-term aspirin use led to gastric ulcers in several patients.",
                "yes",
            ),
            (
                "Chemical: metformin. Disease: type 2 diabetes.\nText: Metformin improved glycaemic control in type 2 diabetes.",
                "no",
            ),
            (
                "Chemical: amiodarone. Disease: hypothyroidism.\nText: Hypothyroidism developed after six months of amiodarone therapy.",
                "yes",
            ),
            (
                "Chemical: salbutamol. Disease: asthma.\nText: Inhaled salbutamol relieved acute asthma symptoms.",
                "no",
            ),
            (
                "Chemical: haloperidol. Disease: tardive dyskinesia.\nText: Tardive dyskinesia appeared in patients treated with haloperidol for years.",
                "yes",
            ),
            (
                "Chemical: paracetamol. Disease: liver failure.\nText: Paracetamol overdose is a leading cause of acute liver failure.",
                "yes",
            ),
            (
                "Chemical: insulin. Disease: hypoglycaemia.\nText: Several episodes of hypoglycaemia followed an increase in the insulin dose.",
                "yes",
            ),
            (
                "Chemical: atorvastatin. Disease: hypercholesterolaemia.\nText: Atorvastatin lowered LDL cholesterol in patients with hypercholesterolaemia.",
                "no",
            ),
            (
                "Chemical: lithium. Disease: diabetes insipidus.\nText: Nephrogenic diabetes insipidus is a known adverse effect of lithium.",
                "yes",
            ),
            (
                "Chemical: omeprazole. Disease: peptic ulcer.\nText: Omeprazole healed peptic ulcers within eight weeks.",
                "no",
            ),
            (
                "Chemical: levodopa. Disease: Parkinson disease.\nText: Levodopa remains the most effective treatment for Parkinson disease.",
                "no",
            ),
        ],
    ),
    "entity_attribute": (
        "Give the requested attribute of the medical entity.",
        [
            ("What is the ICD-10-CM code for essential (primary) hypertension?", "I10"),
            ("What is the ICD-10-CM code for type 2 diabetes mellitus without complications?", "E11.9"),
            ("What is the ICD-10-CM code for acute myocardial infarction, unspecified?", "I21.9"),
            ("What is the ICD-10-CM code for pneumonia, unspecified organism?", "J18.9"),
            ("What is the ICD-10-CM code for urinary tract infection, site not specified?", "N39.0"),
            ("What is the ICD-10-CM code for iron deficiency anemia, unspecified?", "D50.9"),
            ("Which ICD-10-CM chapter contains code I10?", "Diseases of the circulatory system"),
            (
                "Which ICD-10-CM chapter contains code J45.909 (unspecified asthma, uncomplicated)?",
                "Diseases of the respiratory system",
            ),
            (
                "Which ICD-10-CM chapter contains code E03.9 (hypothyroidism, unspecified)?",
                "Endocrine, nutritional and metabolic diseases",
            ),
            (
                "Which ICD-10-CM chapter contains code K21.9 (gastro-esophageal reflux disease without esophagitis)?",
                "Diseases of the digestive system",
            ),
            (
                "What disease does ICD-10-CM code J44.9 describe?",
                "Chronic obstructive pulmonary disease, unspecified",
            ),
            (
                "What disease does ICD-10-CM code G43.909 describe?",
                "Migraine, unspecified, not intractable, without status migrainosus",
            ),
        ],
    ),
    "entity_synonymy": (
        "Do the two terms name the same medical concept? Answer yes or no.",
        [
            ("Term 1: myocardial infarction\nTerm 2: heart attack", "yes"),
            ("Term 1: hypertension\nTerm 2: high blood pressure", "yes"),
            ("Term 1: paracetamol\nTerm 2: acetaminophen", "yes"),
            ("Term 1: varicella\nTerm 2: chickenpox", "yes"),
            ("Term 1: pertussis\nTerm 2: whooping cough", "yes"),
            ("Term 1: renal calculus\nTerm 2: kidney stone", "yes"),
            ("Term 1: epistaxis\nTerm 2: nosebleed", "yes"),
            ("Term 1: pyrexia\nTerm 2: fever", "yes"),
            ("Term 1: hypoglycaemia\nTerm 2: hyperglycaemia", "no"),
            ("Term 1: tachycardia\nTerm 2: bradycardia", "no"),
            ("Term 1: rubella\nTerm 2: measles", "no"),
            ("Term 1: hypothyroidism\nTerm 2: hyperthyroidism", "no"),
        ],
    ),
    "entity_relation": (
        "Answer the question about how the two terminology concepts are related.",
        [
            (
                "What is the parent category of ICD-10-CM code E11.9 (type 2 diabetes mellitus without complications)?",
                "E11 Type 2 diabetes mellitus",
            ),
            (
                "What is the parent category of ICD-10-CM code I21.9 (acute myocardial infarction, unspecified)?",
                "I21 Acute myocardial infarction",
            ),
            (
                "What is the parent category of ICD-10-CM code J45.909 (unspecified asthma, uncomplicated)?",
                "J45.90 Unspecified asthma",
            ),
            (
                "What is the parent category of ICD-10-CM code D50.9 (iron deficiency anemia, unspecified)?",
                "D50 Iron deficiency anemia",
            ),
            ("Is 'type 2 diabetes mellitus' a kind of 'diabetes mellitus'? Answer yes or no.", "yes"),
            ("Is 'bacterial pneumonia' a kind of 'pneumonia'? Answer yes or no.", "yes"),
            ("Is 'migraine' a kind of 'headache disorder'? Answer yes or no.", "yes"),
            ("Is 'iron deficiency anemia' a kind of 'anemia'? Answer yes or no.", "yes"),
            ("Is 'hepatitis B' a kind of 'liver cancer'? Answer yes or no.", "no"),
            ("Is 'influenza' a kind of 'bacterial infection'? Answer yes or no.", "no"),
            ("Is 'asthma' a kind of 'chronic obstructive pulmonary disease'? Answer yes or no.", "no"),
            ("Is 'appendicitis' a kind of 'cardiovascular disease'? Answer yes or no.", "no"),
        ],
    ),
}

README = """# Demo skill data (illustrative only)

Hand-written, short records for all 12 MDKIF skills (12 per skill: 9 train, 3 validation), in the
layout `mdkif data build` writes: `<skill>/{train,validation}.jsonl` plus `manifest.json`.
They let the demo and the tests run offline, without the real data sets.

The content is medically sensible but illustrative, **not for real training or for any clinical use**.
To train real skill adapters, build the data from the native data sets:
`mdkif data build --source ../shared/data/skills --out data/skills --skip-bad`.

Generated by `scripts/make_demo_data.py`; edit that script, not these files.
"""


def records() -> list[SkillRecord]:
    """The demo records, one task per skill (`demo_<skill>`), ids from content like the real builders."""
    out = []
    for skill in SKILLS:
        instruction, pairs = DEMO[skill]
        for inp, output in pairs:
            out.append(
                SkillRecord(
                    id=make_id("demo", skill, inp, output),
                    skill=skill,
                    task=f"demo_{skill}",
                    instruction=instruction,
                    input=inp,
                    output=output,
                    source="demo",
                )
            )
    return out


def main() -> None:
    """Write the demo folder (replacing it atomically) and its README."""
    manifest = write_skill_data(
        records(),
        OUT,
        seed=SEED,
        validation_fraction=0.25,
        settings={"generator": "scripts/make_demo_data.py", "validation_fraction": 0.25},
    )
    (OUT / "README.md").write_text(README, encoding="utf-8")
    counts = {s: (c.train, c.validation) for s, c in manifest.skills.items()}
    print(f"wrote {OUT}: {counts}")


if __name__ == "__main__":
    main()
